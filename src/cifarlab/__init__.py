"""cifarlab: train, evaluate and explain CNN classifiers on CIFAR-10."""

__version__ = "0.1.0"

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
