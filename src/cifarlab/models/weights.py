"""Pretrained MobileNet weights from TFLite flatbuffers, Keras applications .h5 files, or `imagenet`.

Each reader turns a file into a list of conv layers in the network's order (kernel in PyTorch's OIHW
layout plus batch-norm parameters) and an optional classifier; _assign checks every shape against
the model's ConvBNReLU units before it copies anything, so a file that does not fit leaves the model
untouched and the user gets one line naming the first mismatching tensor.

A file with a classifier (e.g. the TFLite v2 ImageNet model) loaded into a model without one
(num_classes=0), or with a different number of classes, loads its backbone and says on stderr
that the classifier was skipped: transfer learning from a classifier file is the common case,
and the v2 file exists only with its classifier.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tflite
import torch
import torch.nn as nn

from cifarlab.data.cifar import default_cache_dir
from cifarlab.errors import UserError
from cifarlab.io import download, sweep_stale_parts
from cifarlab.models.mobilenet import ConvBNReLU, MobileNetV1, MobileNetV2


@dataclass
class _Conv:
    name: str  # the kernel's name in the file, for messages
    shape: tuple[int, ...]  # its shape in the file's own layout, for messages
    weight: torch.Tensor  # OIHW (depthwise: (C, 1, kh, kw))
    depthwise: bool
    bias: torch.Tensor | None = None  # TFLite: batch norm folded into a bias
    bn: tuple[torch.Tensor, ...] | None = None  # Keras: gamma, beta, moving mean, moving variance
    stride: int | None = None  # TFLite only; checked against the model
    relu6: bool | None = None


@dataclass
class _Dense:
    name: str
    weight: torch.Tensor  # (out, in)
    bias: torch.Tensor


def load_weights(model: nn.Module, source: str | Path, *, cache_dir: Path | None = None,
                 input_size: int = 224) -> nn.Module:
    """Load pretrained weights into a MobileNetV1/V2 in place and return it.

    source: a .tflite file (quantised, batch norm folded), a Keras applications .h5/.hdf5 file,
    or 'imagenet' (the Keras applications no-top file for the model's alpha, trained at input_size
    or the nearest of Keras' sizes, downloaded once into <cache_dir>/weights/; cache_dir defaults to
    $CIFARLAB_HOME or ~/.cache/cifarlab). Any misfit or unreadable file raises a one-line UserError.
    """
    if str(source) == "imagenet":
        _h5py("ImageNet weights (Keras .h5)")  # before downloading a file we could not read
        path = fetch_imagenet(model, input_size, cache_dir)
        try:
            return _load(model, path)
        except UserError as e:  # a bad file that passed the size check must not stay cached for good
            path.unlink(missing_ok=True)
            raise UserError(f"{e}; deleted the cached download, run again to fetch it afresh") from None
    return _load(model, Path(source).expanduser())


def _load(model: nn.Module, path: Path) -> nn.Module:
    if not path.is_file():
        raise UserError(f"{path}: weights file not found")
    suffix = path.suffix.lower()
    if suffix == ".tflite":
        convs, head = _read_tflite(path)
    elif suffix in (".h5", ".hdf5"):
        convs, head = _read_h5(path)
    else:
        raise UserError(f"{path}: unknown weights format (expected .tflite, .h5, .hdf5 or 'imagenet')")
    _assign(model, convs, head, path.name)
    return model


# ---------------------------------------------------------------- copying into the model

def _assign(model: nn.Module, convs: list[_Conv], head: _Dense | None, src: str) -> None:
    units = [(n, m) for n, m in model.named_modules() if isinstance(m, ConvBNReLU)]
    _check_fit(units, convs, type(model).__name__, src)  # everything first: a misfit changes nothing
    classifier = getattr(model, "classifier", None)
    load_head = head is not None and _classifier_fits(classifier, head, src)
    with torch.no_grad():
        for (_, unit), c in zip(units, convs):
            unit.conv.weight.copy_(c.weight)
            if c.bn is None:  # folded batch norm: make BN(x) = x + bias exactly
                bn = (torch.ones_like(c.bias), c.bias, torch.zeros_like(c.bias),
                      torch.full_like(c.bias, 1 - unit.bn.eps))
            else:
                bn = c.bn
            for dest, v in zip((unit.bn.weight, unit.bn.bias, unit.bn.running_mean, unit.bn.running_var), bn):
                dest.copy_(v)
        if load_head:
            classifier.weight.copy_(head.weight)
            classifier.bias.copy_(head.bias)


def _check_fit(units: list[tuple[str, ConvBNReLU]], convs: list[_Conv], model_name: str, src: str) -> None:
    if not units:
        raise UserError(f"{src}: {model_name} has no MobileNet conv layers to load into")
    hint = "other alpha?" if len(convs) == len(units) else "other architecture?"
    act = {True: "ReLU6", False: "no activation"}
    for (uname, unit), c in zip(units, convs):
        need = tuple(unit.conv.weight.shape)
        if tuple(c.weight.shape) != need or c.depthwise != unit.depthwise:
            kind = " (depthwise)" if c.depthwise else ""
            raise UserError(f"{src}: tensor '{c.name}'{kind} has shape {c.shape} but the model's "
                            f"{uname}.conv.weight needs {need} ({hint})")
        for v in (c.bias,) if c.bn is None else c.bn:
            if tuple(v.shape) != (need[0],):
                raise UserError(f"{src}: batch norm/bias of '{c.name}' has shape {tuple(v.shape)} but the "
                                f"model's {uname}.bn needs ({need[0]},) (corrupt file?)")
        if c.stride is not None and c.stride != unit.conv.stride[0]:
            raise UserError(f"{src}: '{c.name}' has stride {c.stride} but the model's {uname} has "
                            f"{unit.conv.stride[0]} (other architecture?)")
        if c.relu6 is not None and c.relu6 != unit.relu6:
            raise UserError(f"{src}: '{c.name}' is followed by {act[c.relu6]} but the model's {uname} "
                            f"by {act[unit.relu6]} (other architecture?)")
    if len(convs) != len(units):
        raise UserError(f"{src}: {len(convs)} conv layers but {model_name} has {len(units)} (other architecture?)")


def _classifier_fits(classifier: nn.Module | None, head: _Dense, src: str) -> bool:
    """True when the file's classifier can be loaded; otherwise say on stderr that only the backbone is."""
    n_out, n_in = head.weight.shape
    if not isinstance(classifier, nn.Linear):
        reason = "the model has no classifier (num_classes=0)"
    elif classifier.in_features != n_in:
        raise UserError(f"{src}: classifier '{head.name}' has {n_in} inputs but the model's classifier "
                        f"needs {classifier.in_features}")
    elif classifier.out_features != n_out:
        reason = f"the model's classifier has {classifier.out_features} classes"
    else:
        return True
    print(f"{src}: loaded the backbone only, not the file's {n_out}-class classifier '{head.name}': {reason}",
          file=sys.stderr)
    return False


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:160]}" if text else type(e).__name__


# ---------------------------------------------------------------- TFLite

def _read_tflite(path: Path) -> tuple[list[_Conv], _Dense | None]:
    buf = path.read_bytes()
    if len(buf) < 8 or buf[4:8] != b"TFL3":  # the flatbuffer file identifier of every TFLite model
        raise UserError(f"{path.name}: not a TFLite model (no TFL3 identifier)")
    try:
        return _parse_tflite(buf, path.name)
    except UserError:
        raise
    except Exception as e:  # the flatbuffer reader fails in many ways on corrupt or truncated files
        raise UserError(f"{path.name}: corrupt or truncated TFLite file ({_first_line(e)})") from None


def _parse_tflite(buf: bytes, src: str) -> tuple[list[_Conv], _Dense | None]:
    ops = tflite.BuiltinOperator
    model = tflite.Model.GetRootAsModel(buf, 0)
    if model.SubgraphsLength() < 1:
        raise UserError(f"{src}: TFLite model has no subgraph")
    graph = model.Subgraphs(0)
    convs, head, pooled = [], None, False
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        code = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())  # schema v3a keeps both fields
        if code in (ops.AVERAGE_POOL_2D, ops.MEAN):
            pooled = True  # what follows the global pool is the classifier
        elif code in (ops.CONV_2D, ops.DEPTHWISE_CONV_2D, ops.FULLY_CONNECTED):
            inputs = list(op.InputsAsNumpy()) + [-1]  # (input, filter, bias); bias may be absent or -1
            w_idx, b_idx = inputs[1], inputs[2]
            w_t = graph.Tensors(w_idx)
            w = _dequantize(model, w_t, src)
            b = _dequantize(model, graph.Tensors(b_idx), src) if b_idx >= 0 else np.zeros(w.shape[0], np.float32)
            name, shape = _name(w_t), tuple(int(d) for d in w.shape)
            if pooled or code == ops.FULLY_CONNECTED:
                head = _Dense(name, torch.from_numpy(w.reshape(w.shape[0], -1)), torch.from_numpy(b))
                continue
            depthwise = code == ops.DEPTHWISE_CONV_2D
            opts = (tflite.DepthwiseConv2DOptions if depthwise else tflite.Conv2DOptions)()
            table = op.BuiltinOptions()
            opts.Init(table.Bytes, table.Pos)
            if opts.Padding() != tflite.Padding.SAME or opts.StrideH() != opts.StrideW() \
                    or opts.DilationHFactor() != 1 or opts.DilationWFactor() != 1:
                raise UserError(f"{src}: '{name}' is not a SAME-padded, square-stride, undilated conv "
                                f"(not a MobileNet file?)")
            act = opts.FusedActivationFunction()
            if act not in (tflite.ActivationFunctionType.NONE, tflite.ActivationFunctionType.RELU6):
                raise UserError(f"{src}: '{name}' has an activation other than ReLU6 (not a MobileNet file?)")
            # TFLite kernels: conv OHWI, depthwise (1, H, W, C * multiplier); PyTorch wants OIHW, (C, 1, H, W)
            w = w.transpose(3, 0, 1, 2) if depthwise else w.transpose(0, 3, 1, 2)
            convs.append(_Conv(name, shape, torch.from_numpy(np.ascontiguousarray(w)), depthwise,
                               bias=torch.from_numpy(b), stride=opts.StrideH(),
                               relu6=act == tflite.ActivationFunctionType.RELU6))
    return convs, head


def _name(t) -> str:
    return t.Name().decode(errors="replace").split(";")[0]  # converters join fused names with ';'


# tflite.TensorType: FLOAT32 = 0, FLOAT16 = 1, INT32 = 2 (biases), UINT8 = 3, INT8 = 9
_TFLITE_DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 9: np.int8}


def _dequantize(model, t, src: str) -> np.ndarray:
    """A constant tensor as float32: (q - zero_point) * scale, per tensor or per channel."""
    shape = tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()
    dtype = _TFLITE_DTYPES.get(t.Type())
    if dtype is None:
        raise UserError(f"{src}: tensor '{_name(t)}' has unsupported TFLite type {t.Type()}")
    data = model.Buffers(t.Buffer()).DataAsNumpy()
    if isinstance(data, int) or data.size != int(np.prod(shape)) * np.dtype(dtype).itemsize:
        raise UserError(f"{src}: tensor '{_name(t)}' has no or short data (corrupt or truncated file, "
                        f"or weights computed at run time)")
    q = np.frombuffer(data.tobytes(), dtype).reshape(shape)
    if dtype in (np.float32, np.float16):
        return q.astype(np.float32)
    quant = t.Quantization()
    if quant is None or quant.ScaleLength() == 0:
        raise UserError(f"{src}: tensor '{_name(t)}' is {np.dtype(dtype).name} without quantisation parameters")
    scale = quant.ScaleAsNumpy().astype(np.float64)
    zero = quant.ZeroPointAsNumpy().astype(np.float64) if quant.ZeroPointLength() else np.zeros_like(scale)
    if scale.size > 1:  # per channel along quantized_dimension (int8 files)
        axis = [1] * len(shape)
        axis[quant.QuantizedDimension()] = -1
        scale, zero = scale.reshape(axis), zero.reshape(axis)
    return ((q - zero) * scale).astype(np.float32)


# ---------------------------------------------------------------- Keras .h5

def _h5py(what: str):
    try:
        import h5py
    except ImportError:
        raise UserError(f"{what}: reading Keras .h5 weights needs h5py (pip install 'cifarlab[keras]')") from None
    return h5py


def _read_h5(path: Path) -> tuple[list[_Conv], _Dense | None]:
    h5py = _h5py(path.name)
    try:
        with h5py.File(path, "r") as f:
            return _parse_h5(f, path.name)
    except UserError:
        raise
    except Exception as e:  # OSError for non-HDF5 or truncated files, KeyError for odd layouts
        raise UserError(f"{path.name}: cannot read Keras weights ({_first_line(e)})") from None


def _parse_h5(f, src: str) -> tuple[list[_Conv], _Dense | None]:
    """Keras' legacy weights layout: attrs['layer_names'] in model order, and for each layer a group
    whose attrs['weight_names'] name its datasets, e.g. conv_dw_1/conv_dw_1/depthwise_kernel:0."""
    if "layer_names" not in f.attrs and "model_weights" in f:  # a whole saved model, not save_weights
        f = f["model_weights"]
    if "layer_names" not in f.attrs:
        raise UserError(f"{src}: not a Keras weights file (no layer_names)")
    layers = []
    for layer in f.attrs["layer_names"]:
        layer = layer.decode() if isinstance(layer, bytes) else str(layer)
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in f[layer].attrs.get("weight_names", [])]
        if names:  # a weight name ends in e.g. 'kernel:0'; Keras 2.x may drop the ':0'
            layers.append({n.rsplit("/", 1)[-1].split(":")[0]: (f"{layer}/{n}", f[layer][n][()]) for n in names})

    convs, head, pending = [], None, None
    for w in layers:
        if "gamma" in w or "moving_mean" in w:  # the batch norm after the pending conv
            if pending is None:
                raise UserError(f"{src}: batch norm '{next(iter(w.values()))[0]}' follows no conv layer")
            pending.bn = _bn_params(w)
            convs.append(pending)
            pending = None
        elif "depthwise_kernel" in w:  # (kh, kw, C, multiplier) -> (C * multiplier, 1, kh, kw)
            name, k = w["depthwise_kernel"]
            t = k.transpose(2, 3, 0, 1).reshape(-1, 1, *k.shape[:2])
            pending = _Conv(name, tuple(k.shape), torch.from_numpy(np.ascontiguousarray(t, np.float32)), True)
        elif "kernel" in w:
            name, k = w["kernel"]
            if pending is not None or k.ndim not in (2, 4):
                raise UserError(f"{src}: unexpected layer '{name}' with shape {tuple(k.shape)} (not a MobileNet file?)")
            if "bias" in w:  # conv_preds (1x1 conv) or Dense: the classifier
                out = k.shape[-1]
                head = _Dense(name, torch.from_numpy(np.ascontiguousarray(k.reshape(-1, out).T, np.float32)),
                              torch.from_numpy(np.asarray(w["bias"][1], np.float32)))
            else:  # (kh, kw, in, out) -> (out, in, kh, kw)
                pending = _Conv(name, tuple(k.shape),
                                torch.from_numpy(np.ascontiguousarray(k.transpose(3, 2, 0, 1), np.float32)), False)
    if pending is not None:
        raise UserError(f"{src}: conv layer '{pending.name}' has no batch norm after it (not a MobileNet file?)")
    return convs, head


def _bn_params(w: dict) -> tuple[torch.Tensor, ...]:
    """gamma, beta, moving mean, moving variance; Keras omits gamma/beta for scale/center=False."""
    c = next(iter(w.values()))[1].shape[0]
    defaults = {"gamma": 1.0, "beta": 0.0, "moving_mean": 0.0, "moving_variance": 1.0}
    return tuple(torch.from_numpy(np.asarray(w[k][1], np.float32)) if k in w else torch.full((c,), v)
                 for k, v in defaults.items())


# ---------------------------------------------------------------- imagenet: the Keras applications files

KERAS_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/"
V1_ALPHAS = {1.0: "1_0", 0.75: "7_5", 0.5: "5_0", 0.25: "2_5"}  # Keras' names for them
V2_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
V1_SIZES, V2_SIZES = (128, 160, 192, 224), (96, 128, 160, 192, 224)  # 1.3 and 1.4: 224 only
# Keras publishes no hashes for these files (its get_file() is called without file_hash). Known
# (bytes, md5 or None) below: sizes as Keras' own download progress prints them ("N/N"), md5s as recorded
# by a third-party mirror of the Keras applications weights (not verifiable offline). Checked after
# download and whenever the cached file is used; every file, listed or not (the 128 px v1 file's size is
# not known here), is also checked by loading: every tensor's shape must fit, else the file is deleted.
KNOWN_FILES = {
    "mobilenet_1_0_224_tf_no_top.h5": (17_225_924, "725ccbd03d61d7ced5b5c4cd17e7d527"),
    "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5": (9_406_464, "f1a68526548f7541cda07e19ba6c85f4"),
    "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_128_no_top.h5": (9_406_464, None),
}


def imagenet_url(model: nn.Module, input_size: int = 224) -> str:
    """The canonical Keras applications no-top file for the model's alpha and input size. Another
    size gets the file trained at the nearest size (the weights fit any size), with a note on stderr."""
    alpha = getattr(model, "alpha", None)
    if isinstance(model, MobileNetV1) and alpha in V1_ALPHAS:
        name, tag, sizes = "mobilenet/mobilenet_{}_{}_tf_no_top.h5", V1_ALPHAS[alpha], V1_SIZES
    elif isinstance(model, MobileNetV2) and alpha in V2_ALPHAS:
        name, tag = "mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{}_{}_no_top.h5", float(alpha)
        sizes = (224,) if alpha > 1 else V2_SIZES
    elif isinstance(model, (MobileNetV1, MobileNetV2)):
        known = list(V1_ALPHAS) if isinstance(model, MobileNetV1) else V2_ALPHAS
        raise UserError(f"no Keras ImageNet weights for {type(model).__name__} alpha={alpha} "
                        f"(only alpha {', '.join(map(str, known))}); pass --weights FILE")
    else:
        raise UserError(f"'imagenet' weights exist only for MobileNet v1/v2, not {type(model).__name__}")
    size = min(sizes, key=lambda s: (abs(s - input_size), s))
    if size != input_size:
        print(f"no Keras ImageNet weights trained at {input_size} px; using the {size} px ones", file=sys.stderr)
    return KERAS_BASE + name.format(tag, size)


def fetch_imagenet(model: nn.Module, input_size: int = 224, cache_dir: Path | None = None) -> Path:
    """The cached Keras file for the model, downloaded (atomically) if missing; its size and md5, where
    known, are checked after download and every time the cached file is used (a bad one is deleted)."""
    url = imagenet_url(model, input_size)
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    dest = root / "weights" / url.rsplit("/", 1)[-1]
    size, md5 = KNOWN_FILES.get(dest.name, (None, None))
    sweep_stale_parts(dest.parent)
    if dest.is_file():
        _check_cached(dest, size, md5)
        return dest
    return download(url, dest, "ImageNet weights", "offline? pass --weights FILE (a .h5 or .tflite file)",
                    md5=md5, size=size)


def _check_cached(path: Path, size: int | None, md5: str | None) -> None:
    n = path.stat().st_size
    bad = f"{n} bytes, expected {size}" if size and n != size else None
    if bad is None and md5:
        got = hashlib.md5(path.read_bytes()).hexdigest()  # tens of MB at most
        bad = f"md5 {got}, expected {md5}" if got != md5 else None
    if bad:
        path.unlink(missing_ok=True)
        raise UserError(f"{path}: cached ImageNet weights are corrupt ({bad}); deleted it, run again to "
                        "download it afresh")
