"""The `cifarlab` command line. Exit codes: 0 ok, 2 bad usage or input (one line on stderr), 1 unexpected.

Each sub-command is an `add_<name>_args(p)` that defines its flags, directly above the `cmd_<name>(args)` that uses
them, registered with `@command`; `cifarlab --help` lists the commands in the order they are defined here."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from cifarlab.errors import UserError
from cifarlab.memory import keep_freed_memory


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse's default prints the usage too)
        raise UserError(f"{self.prog}: {message} (see --help)")


Handler = Callable[[argparse.Namespace], int]


class Command(NamedTuple):
    add_args: Callable[[argparse.ArgumentParser], None]
    run: Handler
    parser_kwargs: dict[str, Any]  # help, description, ... for add_parser


COMMANDS: dict[str, Command] = {}  # in definition order, which is --help's order


def command(name: str, add_args: Callable[[argparse.ArgumentParser], None],
            **parser_kwargs: Any) -> Callable[[Handler], Handler]:
    """Register the decorated `cmd_*` as sub-command `name`, its flags defined by `add_args`."""
    def register(run: Handler) -> Handler:
        COMMANDS[name] = Command(add_args, run, parser_kwargs)
        return run
    return register


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cifarlab", description="Train, evaluate and explain CNN classifiers on CIFAR-10, "
                     "reproducing 'Image Classification: CIFAR-10, Convolutional Neural Networks'.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        cmd.add_args(sub.add_parser(name, **cmd.parser_kwargs))
    return parser


def _add_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", metavar="PATH", help="CIFAR-10: cifar-10-python.tar.gz, cifar-10-batches-py/, or a "
                   "train/<class>/, test/<class>/ image tree or .tar/.tar.gz/.zip of one "
                   "(default: $CIFARLAB_DATA, else the cache folder $CIFARLAB_HOME or ~/.cache/cifarlab, "
                   "downloading the official tarball if it is not there)")


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default=None,
                   help="where to compute (default: the config's device, 'auto' = CUDA, else MPS, else CPU); "
                   "on CUDA, bf16 autocast and channels_last are on by default (config key amp: auto|bf16|off)")


def _add_testset(p: argparse.ArgumentParser, help_text: str) -> None:
    # the default is read when the parser is built, so tests and shells can set $CIFARLAB_TESTSET per call
    p.add_argument("--testset", metavar="DIR", default=os.environ.get("CIFARLAB_TESTSET") or None, help=help_text)


def add_train_args(p: argparse.ArgumentParser) -> None:
    from cifarlab.config import list_presets  # here, as in the cmd_* functions: importing cli stays light

    p.add_argument("--preset", default=None, help=f"one of: {', '.join(list_presets())} (required unless --resume)")
    _add_data(p)
    p.add_argument("--out", metavar="RUN_DIR", help="run directory (default: runs/<preset>-<date>-<time>)")
    p.add_argument("--epochs", type=int, help="override the preset's epoch count")
    p.add_argument("--train-subset", type=int, metavar="N", help="train on a class-balanced subset of N images")
    p.add_argument("--seed", type=int, help="random seed (weights, order, augmentation, dropout)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set lr=0.0005 --set augment.rotation=10 "
                   "--set 'lr_drops=[[20, 0.1]]'")
    p.add_argument("--weights", metavar="FILE", help="pretrained backbone for mobilenet presets: a .tflite, a Keras "
                   ".h5, or 'imagenet' (download); default: the preset's")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last.pt "
                   "(--epochs may extend it)")
    p.add_argument("--log", choices=["none", "tensorboard"], default=None,
                   help="live logging (config key log): tensorboard writes RUN_DIR/tb/ (view with "
                   "`tensorboard --logdir RUN_DIR/tb`; needs pip install 'cifarlab[tensorboard]'); default: the "
                   "config's, none")
    _add_device(p)
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")


@command("train", add_train_args, help="train a preset and write a run directory",
         description="Train a preset. The run directory gets config.yaml, history.csv, metrics.json, "
         "last.pt, best.pt and train.log; an interrupted run continues with --resume.")
def cmd_train(args: argparse.Namespace) -> int:
    from cifarlab.config import resolve_config
    from cifarlab.data import load_cifar10
    from cifarlab.device import select_device
    from cifarlab.loggers import loggers_for, require_loggers
    from cifarlab.rundir import RunDir
    from cifarlab.train import fit

    if args.resume:
        run_dir = Path(args.resume)
        if not RunDir(run_dir).config.is_file():
            raise UserError(f"--resume {run_dir}: not a run directory (no config.yaml)")
        if args.preset or args.set or args.train_subset or args.weights or args.seed is not None:
            raise UserError("--resume continues a run with its own config.yaml; only --epochs, --data, "
                            "--device and --log may be given")
        cfg = RunDir(run_dir).load_config()
        if args.epochs is not None:
            if args.epochs <= 0:
                raise UserError(f"--epochs must be positive, got {args.epochs}")
            cfg.epochs = args.epochs
        if args.device:
            cfg.device = args.device
        if args.log:
            cfg.log = args.log
    else:
        if not args.preset:
            raise UserError("cifarlab train: --preset is required (or --resume RUN_DIR)")
        cfg = resolve_config(args.preset, args.set, epochs=args.epochs, train_subset=args.train_subset,
                             seed=args.seed, weights=args.weights, device=args.device, log=args.log)
        run_dir = Path(args.out or f"runs/{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}")
        if run_dir.exists() and not run_dir.is_dir():
            raise UserError(f"--out {run_dir}: exists and is not a folder")
        if run_dir.exists() and any(p != RunDir(run_dir).lock for p in run_dir.iterdir()):  # a killed run's stale lock is no data
            raise UserError(f"{run_dir} already exists and is not empty; continue it with --resume {run_dir} "
                            "or choose another --out")
    if args.data:
        cfg.data = args.data
    select_device(cfg.device)  # an unavailable device fails before minutes of data loading
    require_loggers(cfg)  # so does a missing extra for --log
    data = load_cifar10(cfg.data, progress=not args.quiet)  # fails before the run directory exists
    fit(cfg, data, run_dir, resume=bool(args.resume), quiet=args.quiet, callbacks=loggers_for(cfg, data))
    return 0


def add_lr_find_args(p: argparse.ArgumentParser) -> None:
    from cifarlab.config import list_presets

    p.add_argument("--preset", required=True, help=f"one of: {', '.join(list_presets())}")
    _add_data(p)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override config keys as for train (model, optimiser, batch_size, augment, ...)")
    p.add_argument("--steps", type=int, default=200, help="batches in the sweep (default: %(default)s)")
    p.add_argument("--start-lr", type=float, default=1e-7, help="first learning rate (default: %(default)g)")
    p.add_argument("--end-lr", type=float, default=10.0, help="last learning rate; the sweep stops early once "
                   "the loss diverges (default: %(default)g)")
    p.add_argument("--out", metavar="PNG", help="the plot (default: lr-find-<preset>.png)")
    p.add_argument("--weights", metavar="FILE", help="pretrained backbone for mobilenet presets, as for train")
    _add_device(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


@command("lr-find", add_lr_find_args, help="the learning-rate range test: plot loss vs lr, suggest an lr",
         description="Train a fresh model from the preset for --steps batches while the learning rate grows "
         "exponentially (Smith's range test, fastai's lr_find); plot the loss against the rate, mark the "
         "suggestion (a tenth of the rate with the lowest smoothed loss) and print it as a --set line. "
         "Writes only the plot; no run directory.")
def cmd_lr_find(args: argparse.Namespace) -> int:
    from cifarlab.config import resolve_config
    from cifarlab.data import load_cifar10
    from cifarlab.pictures import save_png
    from cifarlab.report.figures import lr_find_figure
    from cifarlab.train.lrfind import check_range, lr_sweep

    cfg = resolve_config(args.preset, args.set, weights=args.weights, device=args.device)
    check_range(args.start_lr, args.end_lr, args.steps)
    out = Path(args.out or f"lr-find-{cfg.preset}.png")
    if not out.parent.is_dir() or out.is_dir():
        raise UserError(f"--out {out}: {'is a folder' if out.is_dir() else f'folder {out.parent} does not exist'}")
    data = load_cifar10(args.data or cfg.data, progress=not args.quiet)
    try:
        sweep = lr_sweep(cfg, data, args.steps, args.start_lr, args.end_lr, quiet=args.quiet)
    except KeyboardInterrupt:
        raise KeyboardInterrupt("lr-find interrupted; nothing was written") from None
    title = f"lr range test: {cfg.preset} ({cfg.model}, {cfg.optimizer}, batch {cfg.batch_size})"
    save_png(lr_find_figure(sweep.lrs, sweep.losses, sweep.smoothed, sweep.best_lr, sweep.suggestion, title), out)
    end = "the loss diverged" if sweep.diverged else "the end of the range"
    print(f"{len(sweep.lrs)} batches from lr {sweep.lrs[0]:.2g} to {sweep.lrs[-1]:.2g} ({end}); lowest smoothed "
          f"loss {min(sweep.smoothed):.4f} at lr {sweep.best_lr:.3g}; the config's lr: {cfg.lr:g}")
    if sweep.lrs.index(sweep.best_lr) >= 0.9 * len(sweep.lrs):
        print(f"note: the loss was still falling near lr {sweep.lrs[-1]:.2g}; a higher --end-lr may find a lower "
              "minimum")
    print(f"wrote {out}")
    print(f"--set lr={sweep.suggestion:.2g}")
    return 0


def add_evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory; or a model written by `cifarlab export`: "
                   "a .onnx file (run by onnxruntime) or a safetensors EXPORT_DIR, to check it against the run")
    _add_data(p)
    p.add_argument("--checkpoint", default=None, choices=["last", "best"],
                   help="last.pt (the final model, default) or best.pt (best validation epoch)")
    _add_testset(p, "evaluate on DIR/<class>/<photo> instead (any size or format; default: $CIFARLAB_TESTSET)")
    p.add_argument("--filtered", action="store_true", help="the study's filter: Gaussian blur, kernel "
                   "round(width/75), at full resolution before resizing")
    p.add_argument("--fit", default="crop", choices=["crop", "pad", "stretch"],
                   help="make photos square by centre crop (default), padding with their mean colour, or stretching")
    p.add_argument("--strict", action="store_true", help="fail on an unreadable file instead of skipping it")
    p.add_argument("--name", metavar="NAME", help="name of the photo set's results, RUN_DIR/eval/NAME.json etc. "
                   "(default: the folder's name made file-safe, plus _filtered with --filtered, e.g. realworld, "
                   "realworld_filtered; so each photo set keeps its own results). compare and report show the "
                   "study's sets, test and test_filtered, as reproduce writes them: pass --name test (or "
                   "test_filtered) for them to show this set")
    p.add_argument("--out", metavar="FILE", help="for an exported model: also write the report as JSON to FILE "
                   "(an export's results are printed, never written into a run directory)")
    _add_device(p)


@command("evaluate", add_evaluate_args,
         help="score a run on the validation set (CIFAR-10 test split) or a photo test set",
         description="Print and save validation accuracy, per-class accuracy and the confusion "
         "matrix (RUN_DIR/eval/validation.json and validation_confusion.csv). With --testset: the "
         "same for a folder of photos, plus per-image predictions and the misclassified images "
         "(RUN_DIR/eval/NAME.json, NAME_confusion.csv, NAME_predictions.csv, NAME_misclassified.png; "
         "NAME: see --name). An exported .onnx or EXPORT_DIR is scored the same way and its results printed "
         "beside the run's recorded validation accuracy (--out FILE: also as JSON).")
def cmd_evaluate(args: argparse.Namespace) -> int:
    from cifarlab.config import load_config
    from cifarlab.data import load_cifar10
    from cifarlab.evaluate import evaluate_run
    from cifarlab.export.load import is_export

    run_dir = Path(args.run_dir)
    if is_export(run_dir):
        return _evaluate_export(args, run_dir)
    if args.out:
        raise UserError("--out is for an exported model; a run's results go to RUN_DIR/eval/")
    args.checkpoint = args.checkpoint or "last"
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir}: not a run directory (no config.yaml)")
    if args.testset:  # photos only: no CIFAR-10 needed
        return _evaluate_testset(args, run_dir)
    if args.name:
        raise UserError("--name names a photo set's results: it needs --testset (or $CIFARLAB_TESTSET)")
    cfg = load_config(run_dir / "config.yaml")
    data = load_cifar10(args.data or cfg.data)
    report = evaluate_run(run_dir, data.val_x, data.val_y, "validation", args.checkpoint, args.device or "auto")
    print(f"{run_dir} ({args.checkpoint}.pt): validation accuracy {report['accuracy']:.4f} on {report['n']} images")
    for c, a in report["per_class_accuracy"].items():
        print(f"  {c:<11}{a:.3f}")
    print(f"wrote {run_dir / 'eval' / 'validation.json'} and validation_confusion.csv")
    return 0


def _evaluate_testset(args: argparse.Namespace, run_dir: Path) -> int:
    from cifarlab.data.testset import load_testset
    from cifarlab.evaluate.testset import evaluate_testset, output_files, photo_set_name

    name = photo_set_name(args.testset, args.filtered, args.name)  # a bad --name fails before any work
    ts = load_testset(args.testset, filtered=args.filtered, fit=args.fit, strict=args.strict)
    report = evaluate_testset(run_dir, ts, name, args.checkpoint, args.device or "auto")
    print(f"{run_dir} ({args.checkpoint}.pt): {name} accuracy {report['accuracy']:.4f} on {report['n']} images "
          f"from {ts.root} ({'filtered, ' if ts.filtered else ''}fit {ts.fit}), {len(ts.skipped)} skipped")
    for path, reason in ts.skipped[:10]:
        print(f"  skipped {path}: {reason}")
    if len(ts.skipped) > 10:
        print(f"  ... and {len(ts.skipped) - 10} more (listed in {name}.json)")
    for c, a in report["per_class_accuracy"].items():
        print(f"  {c:<11}{a:.3f}")
    if report["most_confused"]:
        print("most confused (true -> predicted: count): "
              + ", ".join(f"{t} -> {p}: {n}" for t, p, n in report["most_confused"]))
    print("wrote " + ", ".join(str(f) for f in output_files(run_dir, name)))
    return 0


def _evaluate_export(args: argparse.Namespace, path: Path) -> int:
    from cifarlab.data import load_cifar10
    from cifarlab.data.testset import load_testset
    from cifarlab.evaluate.testset import photo_set_name
    from cifarlab.export.load import evaluate_export, load_export
    from cifarlab.io import write_json

    if args.checkpoint or args.name:
        raise UserError(f"{'--checkpoint' if args.checkpoint else '--name'} is for a run directory; an export holds "
                        "one model and its results go to --out FILE")
    out = Path(args.out) if args.out else None
    if out and (out.is_dir() or not out.parent.is_dir()):
        raise UserError(f"--out {out}: give a file in an existing folder")
    export = load_export(path, args.device or "auto")  # one line if it is not a cifarlab export
    if args.testset:
        ts = load_testset(args.testset, filtered=args.filtered, fit=args.fit, strict=args.strict)
        report = evaluate_export(export, ts.x, ts.y, photo_set_name(args.testset, args.filtered), testset=ts)
        where = f"from {ts.root} ({'filtered, ' if ts.filtered else ''}fit {ts.fit}), {len(ts.skipped)} skipped"
    else:
        data = load_cifar10(args.data or export.meta.get("data"))
        report = evaluate_export(export, data.val_x, data.val_y, "validation")
        where = f"(the run recorded {report['run_validation_accuracy']:.4f})" \
            if report["run_validation_accuracy"] is not None else "(the run recorded no validation accuracy)"
    print(f"{path} ({export.describe()}): {report['set']} accuracy {report['accuracy']:.4f} on {report['n']} "
          f"images {where}")
    for c, a in report["per_class_accuracy"].items():
        print(f"  {c:<11}{a:.3f}")
    if report.get("most_confused"):
        print("most confused (true -> predicted: count): "
              + ", ".join(f"{t} -> {p}: {n}" for t, p, n in report["most_confused"]))
    if out:
        write_json(out, report)
        print(f"wrote {out}")
    return 0


def add_export_args(p: argparse.ArgumentParser) -> None:
    from cifarlab.export import CONTRACT, FORMATS  # the package's root imports nothing: --help stays light

    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--format", required=True, choices=FORMATS,
                   help="onnx: one .onnx file with a dynamic batch axis (pip install 'cifarlab[export]'); "
                   "torchscript: a traced module for torch.jit.load; safetensors: a folder with model.safetensors, "
                   "config.yaml and a Hugging Face model card (README.md) filled from the run's results")
    p.add_argument("--out", metavar="PATH", help="file (onnx, torchscript) or folder (safetensors) to write "
                   "(default: RUN_DIR/export/CHECKPOINT.onnx, CHECKPOINT.torchscript.pt or CHECKPOINT-safetensors/)")
    p.add_argument("--checkpoint", default="last", choices=["last", "best"],
                   help="last.pt (the final model, default) or best.pt (best validation epoch)")
    p.epilog = f"Every format: {CONTRACT}. Check an export against the run with `cifarlab evaluate FILE_OR_DIR`."


@command("export", add_export_args, help="export a run's model as ONNX, TorchScript, or safetensors with a model card",
         description="Export a trained run's model to run elsewhere (ONNX, TorchScript) or to share it "
         "(safetensors + config + model card). The exported model does what cifarlab's evaluation does to an "
         "image (scaling, normalisation, the MobileNets' resize, the run's test-time augmentation), so it "
         "scores as the run did.")
def cmd_export(args: argparse.Namespace) -> int:
    from cifarlab.export.write import export_run

    out = export_run(args.run_dir, args.format, args.out, args.checkpoint)
    check = "load it with torch.jit.load" if args.format == "torchscript" else f"check it with: cifarlab evaluate {out}"
    print(f"wrote {out} ({args.format}, {args.checkpoint}.pt of {args.run_dir}); {check}")
    return 0


def add_models_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="*", metavar="MODEL",
                   help="models to show (default: the study's Table 1, base and imp); --list names them all")
    p.add_argument("--input-size", type=int, default=None,
                   help="input side in pixels (default: 32, or 128 for mobilenet_*)")
    p.add_argument("--list", action="store_true", help="list every registered model and exit")


@command("models", add_models_args, help="print each model's layers, output shapes and parameters (Table 1)")
def cmd_models(args: argparse.Namespace) -> int:
    from cifarlab.models import create_model, format_table, layer_table, list_models

    if args.list:
        print("\n".join(list_models()))
        return 0
    for name in args.names or ["base", "imp"]:
        size = args.input_size or (128 if name.startswith("mobilenet") else 32)
        if not 8 <= size <= 1024:
            raise UserError(f"--input-size must be in [8, 1024], got {size}")
        print(format_table(name, layer_table(create_model(name), (3, size, size))) + "\n")
    return 0


def add_augment_preview_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="imp2", help="preset whose augment settings to use (default: imp2)")
    _add_data(p)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override augment settings")
    p.add_argument("--out", default="augment_preview.png", metavar="PNG", help="output file (default: %(default)s)")
    p.add_argument("--n", type=int, default=8, help="augmented copies per image (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)


@command("augment-preview", add_augment_preview_args, help="save a PNG grid of augmented training images",
         description="One row per class: the original image, then augmented versions drawn with "
         "the preset's augmentation settings.")
def cmd_augment_preview(args: argparse.Namespace) -> int:
    import torch

    from cifarlab.config import resolve_config
    from cifarlab.data import load_cifar10
    from cifarlab.data.augment import augment_config, preview_grid
    from cifarlab.io import atomic_write

    cfg = resolve_config(args.preset, args.set)
    if args.n <= 0:
        raise UserError(f"--n must be positive, got {args.n}")
    out = Path(args.out)
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: folder {out.parent} does not exist")
    data = load_cifar10(args.data or cfg.data)
    first = torch.stack([torch.nonzero(data.val_y == c)[0, 0] for c in range(10)])  # one image per class
    grid = preview_grid(data.val_x[first], augment_config(cfg), n_aug=args.n, seed=args.seed)
    atomic_write(out, lambda f: grid.save(f, format="PNG"))
    print(f"wrote {out} ({grid.width}x{grid.height}): originals on the left, {args.n} augmented copies each")
    return 0


def add_report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", required=True, metavar="DIR", help="report folder (created if missing)")
    p.add_argument("--title", default=None, help="page title")


@command("report", add_report_args, help="write an HTML report (tables, curves, confusion matrices) for runs",
         description="Write DIR/index.html, one self-contained page (images embedded) with Table 1, "
         "Table 2 next to the study's figures, accuracy curves, confusion matrices, misclassified "
         "images and visualisations of the given runs; the figures also go to DIR/figures/*.png.")
def cmd_report(args: argparse.Namespace) -> int:
    from cifarlab.report import write_report

    kwargs = {"title": args.title} if args.title else {}
    print(write_report([Path(d) for d in args.run_dirs], Path(args.out), **kwargs))
    return 0


def add_compare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    _add_data(p)
    _add_testset(p, "photo test set for the test columns (default: $CIFARLAB_TESTSET; none: 'no test set')")
    p.add_argument("--out", default=".", metavar="DIR", help="where to write table2.md and table2.csv (default: .)")


@command("compare", add_compare_args,
         help="Table 2: validation / test / test-filtered accuracy per model vs the study",
         description="Print and write Table 2 (table2.md, table2.csv in --out) for runs; runs of the "
         "same preset (several seeds) are pooled as mean ± std. Missing evaluations are run first.")
def cmd_compare(args: argparse.Namespace) -> int:
    from cifarlab.data import load_cifar10
    from cifarlab.data.testset import load_testset
    from cifarlab.evaluate import evaluate_run, evaluate_testset
    from cifarlab.evaluate.compare import format_markdown, table2_rows, write_table2
    from cifarlab.rundir import RunDir

    runs = [Path(d) for d in args.run_dirs]
    for run in runs:
        if not RunDir(run).config.is_file() or not RunDir(run).last.is_file():
            raise UserError(f"{run}: not a trained run directory (no config.yaml or last.pt)")
    tests = {}
    if args.testset:
        tests = {"test": load_testset(args.testset), "test_filtered": load_testset(args.testset, filtered=True)}
    cifar = None
    for run in runs:
        if not RunDir(run).eval_json("validation").is_file():
            cifar = cifar or load_cifar10(args.data or RunDir(run).load_config().data)
            evaluate_run(run, cifar.val_x, cifar.val_y, "validation")
        for name, ts in tests.items():
            evaluate_testset(run, ts, name)
    rows = table2_rows(runs)
    print(format_markdown(rows, no_test=not args.testset))
    md, csv = write_table2(rows, Path(args.out), no_test=not args.testset)
    print(f"wrote {md} and {csv}")
    return 0


def add_reproduce_args(p: argparse.ArgumentParser) -> None:
    _add_data(p)
    _add_testset(p, "real-photo test set, DIR/<class>/<photo> (default: $CIFARLAB_TESTSET)")
    p.add_argument("--out", default="study", metavar="DIR", help="output folder (default: %(default)s)")
    p.add_argument("--profile", choices=["study", "laptop", "quick", "full"],
                   help="study: the paper's recipes as published (hours on a CPU; for GPUs; 'full' is its old "
                   "name); laptop: the same networks, data and augmentation with recipes chosen for "
                   "time-to-accuracy, about 90 minutes on 2 CPU cores; quick: a smoke run on subsets. Default: "
                   "study on a CUDA machine, laptop otherwise")
    p.add_argument("--seeds", type=int, default=1, help="runs per model, pooled as mean ± std (default: 1)")
    p.add_argument("--jobs", type=int, metavar="N", help="runs trained at once, each with cores/N threads "
                   "(default: 2 on a CPU with 2+ cores, where two one-thread runs give 1.24-1.35x the "
                   "throughput of one two-thread run; 1 on a GPU)")
    p.add_argument("--dry-run", action="store_true", help="print the plan (one YAML document per run: its "
                   "resolved config and estimated_minutes; then the total) and exit without training")
    p.add_argument("--weights", metavar="FILE", help="MobileNet weights for MNET1/MNET2 (.tflite, .h5 or "
                   "'imagenet', the presets' default, which downloads Keras' file)")
    p.add_argument("--storage", metavar="URL", help="train the plan's runs (every seed) as an Optuna study that "
                   "more processes or machines can join with --worker (see `cifarlab sweep`): a journal file on a "
                   "filesystem they all see, or a database URL (postgresql://...); this process trains too, waits "
                   "for the last run, then evaluates and reports. Needs pip install 'cifarlab[sweep]'")
    p.add_argument("--worker", action="store_true", help="with --storage: only train runs of the study, then "
                   "exit (no evaluation or report)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")


@command("reproduce", add_reproduce_args,
         help="the whole study: train the five models, evaluate, Table 2, report",
         description="Train BASE, IMP1, IMP2, MNET1 and MNET2 (finished runs in OUT are reused, an "
         "interrupted one resumes), evaluate each on the validation set and on the test set "
         "unfiltered and filtered, write Table 2 and an HTML report (OUT/report/index.html).")
def cmd_reproduce(args: argparse.Namespace) -> int:
    from cifarlab.reproduce import reproduce

    if args.worker and not args.storage:
        raise UserError("--worker joins a study: it needs --storage URL")
    if args.storage and args.jobs:
        raise UserError("--storage trains in this process as one worker; start more with --worker, not --jobs")
    index = reproduce(args.data, args.testset, Path(args.out), args.profile, args.seeds, args.weights, args.quiet,
                      jobs=args.jobs, dry_run=args.dry_run, storage=args.storage, worker=args.worker)
    if index is not None:
        print(index)
    return 0


def add_sweep_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC.yaml", help="what to run: preset, data, objective, and a grid or a search "
                   "space (examples/sweeps/seeds.yaml, examples/sweeps/lr.yaml)")
    p.add_argument("--storage", metavar="URL", help="where the study lives, shared by every worker: an Optuna "
                   "journal file on a filesystem they all see (default: SWEEP_DIR/journal.log) or a database URL, "
                   "e.g. postgresql://USER:PASSWORD@HOST/DB")
    p.add_argument("--out", metavar="SWEEP_DIR", help="the sweep's folder: runs/<params>/ (one run directory per "
                   "trial), the journal, the summary and plots (default: sweeps/<SPEC's name>)")
    p.add_argument("--worker", action="store_true", help="only work: take trials until none is left, print no "
                   "summary (start one per process or machine; a worker can join or leave at any time)")
    p.add_argument("--trials", type=int, metavar="N", help="this process takes at most N trials")
    p.add_argument("--summary", action="store_true", help="train nothing: print the best trials and a mean ± std "
                   "table per grid cell (pooled over seed), write SWEEP_DIR/summary.md, summary.csv and Optuna's "
                   "plots (optimization_history.png, param_importances.png)")
    p.add_argument("--heartbeat", type=int, default=10, metavar="S", help="seconds between a running trial's "
                   "heartbeats; a trial silent for 3 of them (its worker killed or lost) is retried by another "
                   "worker, resuming its run directory (default: %(default)s)")
    _add_data(p)
    _add_device(p)
    p.add_argument("--quiet", action="store_true", help="print nothing but errors and the summary")


@command("sweep", add_sweep_args, help="seeds, presets or a hyperparameter search on Optuna workers",
         description="Run a SPEC's grid (every combination once) or search (TPE, pruned on per-epoch "
         "validation accuracy) as one Optuna study that any number of processes and machines work on: start "
         "the same command on each (with --worker for all but one). Every trial is an ordinary run directory, "
         "SWEEP_DIR/runs/<params>, so compare, report and robustness read it; a worker killed mid-trial is "
         "noticed by its missing heartbeat and its trial retried, resuming the run. SPEC keys: preset, data, "
         "subset, epochs, set ({key: value}), objective (val_accuracy, or testset with testset: DIR and "
         "filtered), then grid ({key: [values]}) or space ({key: [low, high] | {log: [low, high]} | "
         "{choice: [...]}}) with trials and prune. Needs pip install 'cifarlab[sweep]'.")
def cmd_sweep(args: argparse.Namespace) -> int:
    from cifarlab.sweep import run_sweep

    if args.summary and (args.worker or args.trials):
        raise UserError("--summary trains nothing: it takes no --worker or --trials")
    text = run_sweep(args.spec, args.storage, args.out, worker=args.worker, trials=args.trials,
                     show_summary=args.summary, heartbeat=args.heartbeat, data=args.data, device=args.device,
                     quiet=args.quiet)
    if text is not None:
        print(text)
    return 0


def add_visualize_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--kind", metavar="KIND",
                   help="activations, filters, occlusion, gradcam, gradcam++ or scorecam (see above)")
    p.add_argument("--image", metavar="FILE_OR_DIR", help="a photo, or a folder for one sheet of many (any size "
                   "or format, read as evaluate --testset reads them); required except for filters")
    p.add_argument("--out", metavar="PNG", help="output file (default: RUN_DIR/viz/KIND.png, gradcam++ as gradcam_pp)")
    p.add_argument("--compare", metavar="RUN_DIR2", help="a second run side by side (e.g. MNET2 next to IMP2)")
    p.add_argument("--layers", "--layer", metavar="NAMES", type=lambda s: [n for n in s.split(",") if n],
                   help="comma-separated layer names, e.g. elu2,elu5 or conv_pw_13 (default: 4 spread evenly from "
                   "input to output, 3 for filters at 128 px; CAMs: one, the last); --list-layers names them")
    p.add_argument("--list-layers", action="store_true", help="print the model's layer names and shapes and exit")
    p.add_argument("--top", action="store_true", help="activations: the 16 most active channels, not a fixed sample")
    p.add_argument("--patch", type=int, help="occlusion: patch side in input pixels (default: input side / 8)")
    p.add_argument("--stride", type=int, help="occlusion: patch step in pixels (default: half the patch)")
    p.add_argument("--steps", type=int, default=128, help="filters: gradient-ascent steps (default: %(default)s)")
    p.add_argument("--channels", type=int, default=32, help="filters: channels tried per layer (default: %(default)s)")
    p.add_argument("--keep", type=int, default=16, help="filters: images kept per layer, highest final activation "
                   "first (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="filters: random start and transforms (default: 0)")
    p.add_argument("--cmap", help="matplotlib colour map (default: inferno for activations, jet for the maps)")
    p.add_argument("--max-images", type=int, default=16, metavar="N",
                   help="at most N images from a folder, spread evenly over it (default: %(default)s)")
    p.add_argument("--checkpoint", default="last", choices=["last", "best"], help="last.pt (default) or best.pt")
    p.add_argument("--fit", default="crop", choices=["crop", "pad", "stretch"],
                   help="make photos square as evaluate does: centre crop (default), pad or stretch")
    p.add_argument("--filtered", action="store_true", help="the study's blur filter before resizing, as evaluate")


@command(
    "visualize", add_visualize_args,
    help="see inside a model: activation grids, filter images, occlusion maps, CAMs",
    formatter_class=argparse.RawDescriptionHelpFormatter,  # keeps the kinds table below as laid out
    description="Write one PNG sheet (default RUN_DIR/viz/KIND.png; `report` shows RUN_DIR/viz/*.png) for "
    "--image, a photo or a folder of photos (flat, or class folders as for evaluate --testset, which also "
    "gives the true class). From-scratch models work at 32 px, MobileNets at their 128 px.\n\nkinds:\n"
    "  activations  the study's Appendix A: ~4 activation layers spread from input to output, 16 channels\n"
    "               each (a fixed random sample, or the 16 most active with --top), one 2x8 grid per\n"
    "               layer, input side on top; colour from 0 (black) to the layer's largest value\n"
    "  filters      Appendix B: DeepDream-style images that maximise a channel's mean conv output (Lucid's\n"
    "               recipe: Fourier/decorrelated image, jitter, scale, rotation), --channels tried per\n"
    "               layer, the --keep highest kept; layers stacked, split by thin lines; no --image\n"
    "  occlusion    drop in the class probability (true class if known, else predicted) as a grey\n"
    "               --patch slides over the image in --stride steps, shown over the image\n"
    "  gradcam      Grad-CAM on the last activation layer (or --layer), predicted and true class\n"
    "  gradcam++    Grad-CAM++ (pixel-weighted gradients), the same layout\n"
    "  scorecam     Score-CAM (gradient-free: one forward pass per channel; slower), the same layout")
def cmd_visualize(args: argparse.Namespace) -> int:
    from cifarlab.viz import check_options, load_probe, visualize

    if args.list_layers:
        for run in [args.run_dir] + ([args.compare] if args.compare else []):
            probe = load_probe(run, args.checkpoint)
            print(f"{run} ({probe.label}, {probe.input_size} px):")
            for layer in probe.layers:
                c, h, w = layer.shape
                print(f"  {layer.name:<12}{h}x{w}x{c}")
        return 0
    if not args.kind:
        raise UserError("cifarlab visualize: --kind is required (or --list-layers)")
    check_options(args.kind, steps=args.steps, channels=args.channels, keep=args.keep, max_images=args.max_images)
    out = visualize(args.run_dir, args.kind, args.image, args.out, compare=args.compare, checkpoint=args.checkpoint,
                    fit=args.fit, filtered=args.filtered, max_images=args.max_images, layers=args.layers,
                    top=args.top, patch=args.patch, stride=args.stride, steps=args.steps, channels=args.channels,
                    keep=args.keep, cmap=args.cmap, seed=args.seed)
    print(f"wrote {out}")
    return 0


def add_robustness_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    _add_data(p)
    p.add_argument("--corruptions", default="all", metavar="LIST",
                   help="comma list, 'all' (default) or 'none': gaussian_noise, gaussian_blur, defocus_blur, "
                   "jpeg_compression, contrast, brightness, pixelate")
    p.add_argument("--severities", default="1-5", metavar="S", help="e.g. 1-5 (default), 1,3,5 or 2")
    p.add_argument("--limit", type=int, metavar="N", help="use a fixed class-balanced subset of N validation "
                   "images (the first N/10 of each class; default: all 10,000)")
    _add_testset(p, "real photos DIR/<class>/<photo> for the blur sweep and real-world calibration "
                 "(default: $CIFARLAB_TESTSET; none: no blur sweep)")
    p.add_argument("--resize", default="antialias,nearest,bilinear", metavar="LIST",
                   help="resizes for the blur sweep: antialias (Pillow Lanczos, as load_testset), nearest, "
                   "bilinear (no antialiasing, as OpenCV's default); default: all three")
    p.add_argument("--no-validation", action="store_true", help="skip CIFAR-10 (corruptions, sharpening, "
                   "calibration): only the photo blur sweep")
    p.add_argument("--no-sharpen", action="store_true", help="skip the sharpened-validation sweep")
    p.add_argument("--checkpoint", default="last", choices=["last", "best"])
    p.add_argument("--seed", type=int, default=0, help="seed of the noise corruptions (default: 0)")
    p.add_argument("--reuse", action="store_true", help="runs that already have eval/robustness.json are not "
                   "evaluated again, only pooled (e.g. to add a seed, or to combine runs evaluated separately)")
    p.add_argument("--out", default="robustness", metavar="DIR", help="cross-run CSVs and plots (default: %(default)s)")


@command("robustness", add_robustness_args, help="corruption sweeps, the blur hypothesis on photos, calibration",
         description="Evaluate runs under CIFAR-10-C-style corruptions (Hendrycks & Dietterich 2019, "
         "their CIFAR severity parameters; generated on the fly), on real photos blurred by a Gaussian of "
         "sigma = f x width before a resize (antialias, nearest or bilinear; plus the study's "
         "round(w/75) rule), on sharpened validation images, and calibration (ECE, reliability "
         "diagrams, temperature scaling fitted on a fixed random half of the evaluated validation "
         "images). Per run: RUN_DIR/eval/robustness.json and robustness_*.csv. Across runs, in --out: "
         "CSVs, summary.md and plots; runs of the same preset (several seeds) pool as mean ± std.")
def cmd_robustness(args: argparse.Namespace) -> int:
    from cifarlab.data import load_cifar10
    from cifarlab.data.corruptions import parse_corruptions, parse_severities
    from cifarlab.evaluate.robustness import RESIZES, load_results, run_robustness, write_outputs
    from cifarlab.report.robustness_figures import write_figures
    from cifarlab.rundir import RunDir

    runs = [Path(d) for d in args.run_dirs]
    for run in runs:
        if not RunDir(run).config.is_file() or not RunDir(run).checkpoint(args.checkpoint).is_file():
            raise UserError(f"{run}: not a trained run directory (no config.yaml or {args.checkpoint}.pt)")
    corruptions, severities = parse_corruptions(args.corruptions), parse_severities(args.severities)
    resizes = tuple(r.strip() for r in args.resize.split(",") if r.strip())
    if not resizes or any(r not in RESIZES for r in resizes):
        raise UserError(f"--resize: expected a comma list of {', '.join(RESIZES)}, got '{args.resize}'")
    if args.limit is not None and args.limit < 10:
        raise UserError(f"--limit must be at least 10 (one image per class), got {args.limit}")
    if args.no_validation and not args.testset:
        raise UserError("--no-validation leaves nothing to do without --testset")
    todo = [r for r in runs if not (args.reuse and load_results(r))]
    val = {}
    if todo and not args.no_validation:
        cifar = load_cifar10(args.data or RunDir(todo[0]).load_config().data)
        val = {"val_x": cifar.val_x, "val_y": cifar.val_y, "data_source": cifar.source}
    if todo:
        run_robustness(todo, **val, testset=args.testset, corruptions=corruptions, severities=severities,
                       limit=args.limit, resizes=resizes, do_sharpen=not args.no_sharpen,
                       checkpoint=args.checkpoint, seed=args.seed)
    results = [load_results(r) for r in runs]
    written = write_outputs(results, Path(args.out)) + write_figures(results, Path(args.out))
    print((Path(args.out) / "summary.md").read_text())
    print("wrote " + ", ".join(str(p) for p in written) + f" and {len(runs)} x RUN_DIR/eval/robustness.json")
    return 0


def add_app_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="trained runs to load (read only, once)")
    _add_testset(p, "photos DIR/<class>/<photo> to pick from on the page, their true class known "
                 "(default: $CIFARLAB_TESTSET; none: uploads only)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine "
                   "only; 0.0.0.0 lets the network in)")
    p.add_argument("--port", type=int, default=7860, help="port (default: %(default)s)")
    p.add_argument("--max-upload-mb", type=float, default=64, metavar="MB",
                   help="largest photo accepted, in MB (default: %(default)s; decoding also refuses over 50 MP)")
    p.add_argument("--checkpoint", default="last", choices=["last", "best"])


@command("app", add_app_args, help="a local web page: any photo through every run, and why they answer",
         description="Start a local web app (Gradio; pip install 'cifarlab[app]'): upload or pick a photo and see "
         "every run's top-5 answer on the 32x32 (128x128 for MobileNets) image it sees, unfiltered and with the "
         "study's blur; Grad-CAM, Grad-CAM++, Score-CAM and occlusion for a chosen model, class and layer, and "
         "activation grids; the runs' Table 2 rows, curves, confusion matrices and robustness figures. Models "
         "run on the CPU; nothing is written into the run directories.")
def cmd_app(args: argparse.Namespace) -> int:
    from cifarlab.app.lab import check_run
    from cifarlab.app.ui import check_port, import_gradio, serve

    for run in args.run_dirs:  # bad arguments: one line before anything loads
        check_run(run, args.checkpoint)
    if args.testset and not Path(args.testset).is_dir():
        raise UserError(f"--testset {args.testset}: not a folder")
    if not 1 <= args.port <= 65535:
        raise UserError(f"--port must be in [1, 65535], got {args.port}")
    if not args.max_upload_mb > 0:
        raise UserError(f"--max-upload-mb must be positive, got {args.max_upload_mb}")
    check_port(args.host, args.port)
    import_gradio()
    serve(args.run_dirs, args.testset, args.host, args.port, args.max_upload_mb, args.checkpoint)
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        keep_freed_memory()  # batches reuse freed memory instead of faulting fresh pages in (benchmarks/embed_alloc.py)
        return COMMANDS[args.command].run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `cifarlab evaluate ... | head`: the reader left, nothing is wrong
        sys.stderr.close()
        return 0
    except KeyboardInterrupt as e:  # training says what it kept and the exact resume command
        print(str(e) or "interrupted; a training run continues with: cifarlab train --resume RUN_DIR", file=sys.stderr)
        return 130
    except OSError as e:  # a file or folder we were pointed at: unreadable, unwritable, disk full
        if os.environ.get("CIFARLAB_DEBUG"):
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except Exception as e:  # unexpected: one line, the traceback only on request
        if os.environ.get("CIFARLAB_DEBUG"):
            raise
        print(f"unexpected error: {type(e).__name__}: {e} (set CIFARLAB_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
