"""Run configuration: a shipped YAML preset, overridden by `--set key=value`, validated, fully resolved.

Every key is known and typed; a typo gets "did you mean". Nested keys use dots: `augment.rotation=10`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from cifarlab.errors import UserError


@dataclass(frozen=True)
class AugmentConfig:
    """The `augment` section: Keras ImageDataGenerator settings, applied by cifarlab.data.augment (see
    there for the exact mapping). Checked when made; frozen, so it hashes and its str (part of the
    MobileNet view cache's key) is the same in every run with the same settings."""
    rotation: float = 0.0  # degrees; angle ~ U(-rotation, rotation)
    width_shift: float = 0.0  # fraction of width; tx ~ U(-ws, ws)
    height_shift: float = 0.0  # fraction of height; ty ~ U(-hs, hs)
    zoom: tuple[float, float] = (1.0, 1.0)  # Keras zoom_range [lo, hi]; > 1 zooms out; YAML's list becomes a tuple
    channel_shift: float = 0.0  # on [0, 1] pixels; one value for all channels
    hflip: bool = False  # p = 0.5
    fill: str = "nearest"  # 'nearest' | 'constant' | 'reflect'
    # fast-trainer augmentation (no warp): random translation by up to `translate` pixels (reflect
    # padding) and, with alternate_flip, each image flipped in every other epoch instead of at random
    translate: int = 0
    alternate_flip: bool = False

    def __post_init__(self) -> None:
        _check_augment(self)  # before zoom becomes floats: an error shows the numbers as given
        object.__setattr__(self, "zoom", tuple(float(z) for z in self.zoom))

    @property
    def geometric(self) -> bool:
        """Whether a warp is needed; without one, flip and channel shift stay exact."""
        return bool(self.rotation or self.width_shift or self.height_shift or self.zoom != (1.0, 1.0))

    @property
    def enabled(self) -> bool:
        return self.geometric or bool(self.channel_shift) or self.hflip or self.translate > 0


@dataclass
class Config:
    preset: str = ""
    extends: str = ""  # the preset this one changes (its root: the study's row, e.g. imp2 for imp2-laptop)
    description: str = ""
    model: str = "imp"
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    lr_drops: list[list[float]] = field(default_factory=list)  # [[epoch, factor]]: after `epoch`, lr *= factor
    l2: float = 0.0  # Keras kernel_regularizer=l2(l2) on every conv kernel: loss += l2 * sum(w**2)
    # the optimiser and schedule (cifarlab.train.recipe): the study's Adam + manual drops by default
    optimizer: str = "adam"  # adam | sgd (Nesterov momentum)
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0  # sgd only, coupled (added to the gradient)
    bias_lr_scale: float = 1.0  # batch-norm shifts get lr * this and weight_decay / this (airbench: 64)
    schedule: str = "drops"  # drops (lr_drops at epoch ends) | triangle (per step: warm-up then linear decay)
    warmup: float = 0.23  # triangle: fraction of all steps spent rising to lr
    lr_start: float = 0.2  # triangle: first lr as a fraction of lr
    lr_end: float = 0.07  # triangle: last lr as a fraction of lr
    label_smoothing: float = 0.0
    lookahead: bool = False  # every 5 steps, pull the weights towards a slow average (decay rising to 0.77)
    tta: str = "none"  # test-time augmentation at evaluation: none | flip | flip_translate
    amp: str = "auto"  # auto (bf16 autocast on CUDA, none on CPU/MPS) | bf16 | off
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    seed: int = 0
    train_subset: int | None = None  # class-balanced subset of the training set, for quick runs
    eval_batch_size: int = 1000
    device: str = "auto"
    channels_last: bool = False
    data: str | None = None  # recorded for the run; the CLI's --data wins
    log: str = "none"  # live logging while training: none | tensorboard (RUN_DIR/tb/, cifarlab.loggers)
    # transfer learning (mobilenet_* models only)
    weights: str | None = None  # .tflite, Keras .h5, or 'imagenet' (download); None: random init
    alpha: float = 1.0  # MobileNet width multiplier
    input_size: int = 32  # images are upscaled (bilinear) to this size before the model
    trainable: str = "all"  # head (MNET1: backbone frozen) | last_conv (MNET2) | all
    head: str = "avg"  # avg (global average pooling) | flatten, before dropout + dense
    dropout: float = 0.0  # before the new dense layer
    cache_features: bool = True  # without augmentation, run the frozen part once and reuse its output
    # with augmentation: 0 = through the whole backbone on the fly (every epoch); K > 0 = K augmented views
    # of each image embedded once up to the last backbone unit (train/viewcache.py), one shown per epoch
    aug_views: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def lr_at(self, epoch: int) -> float:
        """Learning rate of 1-based `epoch`: the base rate times every drop whose epoch has passed."""
        lr = self.lr
        for at, factor in self.lr_drops:
            if epoch > at:
                lr *= factor
        return lr


_DEVICES = ("auto", "cpu", "cuda", "mps")
_OPTIMIZERS = ("adam", "sgd")
_SCHEDULES = ("drops", "triangle")
_TTA = ("none", "flip", "flip_translate")
_AMP = ("auto", "bf16", "off")
_TRAINABLE = ("head", "last_conv", "all")
_HEADS = ("avg", "flatten")
_FILLS = ("nearest", "constant", "reflect")
# live loggers (`log`, a comma-separated list or "none"); MLflow and W&B were weighed and left out (README)
LOGGERS = ("tensorboard",)
# The names in cifarlab.models' registry, spelled here so that checking a config needs no torch and no
# import from a higher layer; tests/test_architecture.py keeps the two equal.
MODELS = ("base", "fast", "fast_small", "imp", "mobilenet_v1", "mobilenet_v2")


def list_presets() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("cifarlab.presets").iterdir() if p.name.endswith(".yaml"))


def load_preset(name: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """A preset's keys; `extends: other` starts from another preset's (which then names the study's row)."""
    path = resources.files("cifarlab.presets") / f"{name}.yaml"
    if not path.is_file():
        raise UserError(f"unknown preset '{name}' (known: {', '.join(list_presets())}){_suggest(name, list_presets())}")
    raw = yaml.safe_load(path.read_text()) or {}
    parent = raw.get("extends")
    if parent:
        if parent in _seen + (name,):
            raise UserError(f"preset '{name}': 'extends' loops back to '{parent}'")
        base = load_preset(parent, _seen + (name,))
        raw = merge({k: v for k, v in base.items() if k != "preset"}, {**raw, "extends": base.get("extends") or parent})
    raw.setdefault("preset", name)
    return raw


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`["lr=0.01", "augment.rotation=10"]` -> nested dict; values are parsed as YAML scalars/lists."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--set expects key=value, got '{pair}'")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            raise UserError(f"--set {key}: cannot parse value '{value}'") from None
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {key}: '{p}' is not a section")
        node[leaf] = parsed
    return out


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def build_config(raw: dict[str, Any]) -> Config:
    """Validate a plain dict (preset + overrides, or a run's config.yaml) into a Config."""
    if not isinstance(raw, dict):
        raise UserError("config must be a mapping of keys to values")
    values = _check_section(raw, Config, "")
    aug = values.get("augment") or {}  # `augment: null` (--set augment=null): no augmentation
    if not isinstance(aug, dict):
        raise UserError("config key 'augment' must be a mapping, or null for none")
    values["augment"] = AugmentConfig(**_check_section(aug, AugmentConfig, "augment."))
    cfg = Config(**values)
    _check_ranges(cfg)
    return cfg


def resolve_config(preset: str, overrides: list[str] | None = None, **direct: Any) -> Config:
    """Preset, then `--set` overrides, then direct CLI flags (`epochs=...`) that are not None."""
    raw = merge(load_preset(preset), parse_overrides(overrides or []))
    raw.update({k: v for k, v in direct.items() if v is not None})
    return build_config(raw)


def save_config(cfg: Config, path: Path) -> None:
    from cifarlab.io import write_text

    write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))  # atomic: a kill never leaves half a config


def load_config(path: Path) -> Config:
    """yaml.safe_load: plain data only. A `!!python/...` tag is refused before anything is constructed."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise UserError(f"{path}: cannot read config ({_first_line(e)})") from None
    try:
        return build_config(raw)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None


def _first_line(e: BaseException) -> str:
    text = " ".join(str(e).split("\n")[:2]).strip() if str(e).strip() else ""
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


def _suggest(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def _check_section(raw: dict[str, Any], cls: type, prefix: str) -> dict[str, Any]:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = {}
    for key, value in raw.items():
        if key not in fields:
            raise UserError(f"unknown config key '{prefix}{key}'{_suggest(prefix + str(key), [prefix + f for f in fields])}")
        out[key] = value if key == "augment" else _check_type(prefix + key, value, fields[key].type)
    return out


def _check_type(key: str, value: Any, typ: str) -> Any:
    optional = "None" in typ
    if value is None:
        if optional:
            return None
        raise UserError(f"config key '{key}' must not be empty")
    base = typ.replace(" | None", "")
    if "float" in base:  # YAML 1.1 reads 5e-4 and 1e30 (no dot) as strings; people mean numbers
        value = _as_numbers(value)
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": _is_number(value),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
        "list[float]": isinstance(value, list) and all(_is_number(v) for v in value),
        "tuple[float, float]": isinstance(value, (list, tuple)) and all(_is_number(v) for v in value),
        "list[list[float]]": isinstance(value, list)
        and all(isinstance(v, list) and len(v) == 2 and all(_is_number(x) for x in v) for v in value),
    }[base]
    if not ok:
        raise UserError(f"config key '{key}' must be {_TYPE_WORDS[base]}, got {value!r}")
    return float(value) if base == "float" else value


_TYPE_WORDS = {
    "int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
    "list[float]": "a list of numbers", "tuple[float, float]": "a list of numbers",
    "list[list[float]]": "a list of [epoch, factor] pairs",
}


def _as_numbers(v: Any) -> Any:
    if isinstance(v, list):
        return [_as_numbers(x) for x in v]
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def _is_number(v: Any) -> bool:
    """A finite int or float: nan and inf would pass every range check below (nan compares False)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_ranges(cfg: Config) -> None:
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise UserError(msg)

    need(cfg.epochs > 0, f"config key 'epochs' must be positive, got {cfg.epochs}")
    need(cfg.batch_size > 0, f"config key 'batch_size' must be positive, got {cfg.batch_size}")
    need(cfg.eval_batch_size > 0, f"config key 'eval_batch_size' must be positive, got {cfg.eval_batch_size}")
    need(cfg.lr > 0, f"config key 'lr' must be positive, got {cfg.lr}")
    need(cfg.l2 >= 0, f"config key 'l2' must be >= 0, got {cfg.l2}")
    need(cfg.train_subset is None or cfg.train_subset > 0,
         f"config key 'train_subset' must be positive, got {cfg.train_subset}")
    need(0 <= cfg.seed < 2**32, f"config key 'seed' must be in [0, 2**32), got {cfg.seed}")
    _choice("device", cfg.device, _DEVICES)
    for key, allowed in (("optimizer", _OPTIMIZERS), ("schedule", _SCHEDULES), ("tta", _TTA), ("amp", _AMP)):
        _choice(key, getattr(cfg, key), allowed)
    need(0 <= cfg.momentum < 1, f"config key 'momentum' must be in [0, 1), got {cfg.momentum}")
    need(cfg.weight_decay >= 0, f"config key 'weight_decay' must be >= 0, got {cfg.weight_decay}")
    need(cfg.bias_lr_scale > 0, f"config key 'bias_lr_scale' must be positive, got {cfg.bias_lr_scale}")
    need(0 <= cfg.warmup <= 1, f"config key 'warmup' must be in [0, 1], got {cfg.warmup}")
    need(cfg.lr_start >= 0 and cfg.lr_end >= 0, "config keys 'lr_start' and 'lr_end' must be >= 0")
    need(0 <= cfg.label_smoothing < 1, f"config key 'label_smoothing' must be in [0, 1), got {cfg.label_smoothing}")
    for at, factor in cfg.lr_drops:
        need(at >= 0 and factor > 0, f"config key 'lr_drops': need epoch >= 0 and factor > 0, got [{at}, {factor}]")
    need(0 <= cfg.aug_views <= 64, f"config key 'aug_views' must be in [0, 64], got {cfg.aug_views}")
    need(0 <= cfg.dropout < 1, f"config key 'dropout' must be in [0, 1), got {cfg.dropout}")
    need(0 < cfg.alpha <= 4, f"config key 'alpha' must be in (0, 4], got {cfg.alpha}")
    need(8 <= cfg.input_size <= 1024, f"config key 'input_size' must be in [8, 1024], got {cfg.input_size}")
    for name in log_names(cfg.log):
        _choice("log", name, ("none",) + LOGGERS)
    _choice("trainable", cfg.trainable, _TRAINABLE)
    _choice("head", cfg.head, _HEADS)
    need(cfg.model in MODELS, f"config key 'model': unknown model '{cfg.model}' "
         f"(known: {', '.join(MODELS)}){_suggest(cfg.model, list(MODELS))}")
    if not is_transfer(cfg):
        for key, default in (("weights", None), ("trainable", "all"), ("input_size", 32)):
            need(getattr(cfg, key) == default, f"config key '{key}' applies to mobilenet_* models only, not '{cfg.model}'")


def _choice(key: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise UserError(f"config key '{key}' must be one of {', '.join(options)}, got '{value}'{_suggest(value, list(options))}")


def _check_augment(a: AugmentConfig) -> None:
    """The augment ranges, checked whenever an AugmentConfig is made (from a config or directly)."""
    checks = [(0 <= a.rotation <= 180, f"config key 'augment.rotation' must be in [0, 180] degrees, got {a.rotation}"),
              *((0 <= getattr(a, n) <= 1, f"config key 'augment.{n}' must be in [0, 1], got {getattr(a, n)}")
                for n in ("width_shift", "height_shift", "channel_shift")),
              (len(a.zoom) == 2 and 0 < a.zoom[0] <= a.zoom[1],
               f"config key 'augment.zoom' must be [low, high] with 0 < low <= high, got {list(a.zoom)}"),
              (0 <= a.translate <= 8, f"config key 'augment.translate' must be in [0, 8] pixels, got {a.translate}")]
    for ok, msg in checks:
        if not ok:
            raise UserError(msg)
    _choice("augment.fill", a.fill, _FILLS)


def log_names(log: str) -> list[str]:
    """Config key `log` as a list of loggers: 'none' -> [], 'tensorboard' -> ['tensorboard'] (comma-separated)."""
    return [] if log.strip() == "none" else [n.strip() for n in log.split(",")]


def is_transfer(cfg: Config) -> bool:
    """Pretrained-backbone models get the transfer wrapper (upscaling, freezing, new head)."""
    return cfg.model.startswith("mobilenet")
