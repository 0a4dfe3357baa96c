"""CIFAR-10 data: loading (official batches or image folders), caching, download, subsets."""

from cifarlab.data.cifar import (
    CIFAR10_MD5,
    CIFAR10_URL,
    Cifar10,
    class_balanced_subset,
    load_cifar10,
    resolve_data_source,
)

__all__ = ["Cifar10", "load_cifar10", "resolve_data_source", "CIFAR10_URL", "CIFAR10_MD5", "class_balanced_subset"]
