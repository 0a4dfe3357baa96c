"""Export a run's model to run elsewhere (ONNX, TorchScript) or to share (safetensors + config + model card):
`write.export_run`; and load an export back to score it (`cifarlab evaluate model.onnx` or `EXPORT_DIR`):
`load.load_export`, `load.evaluate_export`. The model card is `card.py`; the graph from images to logits
and its serialisers are `graph.py`.

To add a format: a function that returns its bytes (graph.py), an entry in write.WRITERS, FORMATS and
DEFAULT_NAME here, and a case in tests/test_export.py that runs it against predict_logits.

This file imports nothing, so the CLI can show the input contract in --help without loading torch."""

FORMATS = ("onnx", "torchscript", "safetensors")
DEFAULT_NAME = {"onnx": "{}.onnx", "torchscript": "{}.torchscript.pt", "safetensors": "{}-safetensors"}
WEIGHTS, CONFIG, CARD = "model.safetensors", "config.yaml", "README.md"  # an EXPORT_DIR's files
INPUT, OUTPUT = "images", "logits"
CONTRACT = ("input 'images': uint8 RGB images, shape (N, 3, 32, 32) (NCHW, any batch size N), pixel values "
            "0-255 as stored in CIFAR-10, not normalised (the graph divides by 255 and does the model's own "
            "normalisation and, for MobileNets, the 32->128 bilinear resize); output 'logits': float32 (N, 10) "
            "in CIFAR-10's class order, before softmax")
