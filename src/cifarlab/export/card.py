"""What a run recorded about itself (accuracy per set, robustness, calibration, data, time, machine) and
the model card made from it: README.md in the Hugging Face format (YAML front matter, then Markdown).
Every number comes from the run's own files, with the file named; what was not measured says so."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from cifarlab import CLASSES, __version__
from cifarlab.config import Config, resolve_config
from cifarlab.evaluate.compare import STUDY_TABLE2
from cifarlab.rundir import RunDir

NOT_EVALUATED = "not evaluated"
SETS = {"validation": "Validation (CIFAR-10 test split, the study's validation set)",
        "test": "Real-world photos (the study's test set)",
        "test_filtered": "Real-world photos, filtered (the study's blur)"}
# settings that say where or how fast a run ran, not what it learned: left out of "differs from the study"
NOT_COMPARED = ("preset", "extends", "description", "data", "device", "weights", "log", "eval_batch_size",
                "channels_last", "cache_features")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def recorded(rd: RunDir, name: str, checkpoint: str) -> dict[str, Any] | None:
    """eval/<name>.json if it was made from this checkpoint and is not older than last.pt (RunDir.is_stale)."""
    path = rd.eval_json(name)
    return None if rd.is_stale(path, checkpoint) else _read_json(path)


def run_results(rd: RunDir, checkpoint: str) -> dict[str, Any]:
    """{set: {accuracy, n, source} or None}, plus robustness, calibration and metrics.json, for one checkpoint."""
    metrics = _read_json(rd.metrics) or {}
    out: dict[str, Any] = {"metrics": metrics, "sets": {}}
    for name in SETS:
        r = recorded(rd, name, checkpoint)
        out["sets"][name] = r and {"accuracy": r["accuracy"], "n": r.get("n"), "source": f"eval/{name}.json"}
    if out["sets"]["validation"] is None and metrics:  # measured by training on all validation images
        key = "val_accuracy" if checkpoint == "last" else "best_val_accuracy"
        if metrics.get(key) is not None:
            out["sets"]["validation"] = {"accuracy": metrics[key], "n": None,
                                         "source": f"metrics.json ({key}, measured during training)"}
    rob = recorded(rd, "robustness", checkpoint) or {}
    out["corruptions"], out["calibration"] = rob.get("corruptions"), rob.get("calibration")
    return out


def describe_data(source: str | None) -> str:
    """A data source as load_cifar10 names it ('PATH (image folders)'), saying when it is the JPEG copy."""
    if not source:
        return "not recorded (a run made before metrics.json recorded its data source)"
    path, _, kind = source.rpartition(" (")
    path, kind = (path or source), kind.rstrip(")")
    name = Path(path).name
    if kind == "python batches":
        return f"CIFAR-10, the official python batches (`{name}`)"
    if "jpg" in name.lower() or "jpeg" in name.lower():
        return (f"CIFAR-10 (JPEG copy, `{name}`): images re-encoded as JPEG, so accuracies can sit slightly "
                "below those on the official files")
    return f"CIFAR-10 from an image-folder copy (`{name}`), not the official batches"


def _data(metrics: dict[str, Any], cfg: Config, corruptions: dict[str, Any] | None) -> str:
    """The training data as recorded (metrics.json, else config.yaml); older runs: what robustness read."""
    if metrics.get("data") or cfg.data:
        return describe_data(metrics.get("data") or cfg.data)
    if corruptions and corruptions.get("data"):
        return describe_data(corruptions["data"]) + " (as eval/robustness.json recorded it; the run did not)"
    return describe_data(None)


def describe_machine(m: dict[str, Any] | None) -> str:
    if not m:
        return "not recorded (a run made before metrics.json recorded its machine)"
    procs = f", {m['processes']} processes" if m.get("processes", 1) > 1 else ""
    threads = m.get("threads")
    return (f"{m.get('device')} ({m.get('name')}; {m.get('cpu_cores')} CPU cores, {threads} "
            f"thread{'' if threads == 1 else 's'}"
            f"{procs}), {m.get('platform')}, torch {m.get('torch')}")


def preset_header(name: str) -> str:
    """The comment at the top of a preset's YAML: what it was tuned from, what differs from the study."""
    path = resources.files("cifarlab.presets") / f"{name}.yaml"
    if not name or not path.is_file():
        return ""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# ").rstrip())
    return " ".join(lines)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def study_row(cfg: Config) -> str | None:
    row = cfg.extends or cfg.preset
    return row if row in STUDY_TABLE2 else None


def differences(cfg: Config) -> list[tuple[str, Any, Any]]:
    """(key, this run, the study's preset) for every setting that differs from the study's row."""
    row = study_row(cfg)
    if row is None:
        return []
    ours, study = _flat(cfg.to_dict()), _flat(resolve_config(row).to_dict())
    return [(k, ours[k], study.get(k)) for k in ours if k.split(".")[0] not in NOT_COMPARED and ours[k] != study.get(k)]


def _pct(a: float | None) -> str:
    return NOT_EVALUATED if a is None else f"{100 * a:.2f} %"


def _minutes(s: float | None) -> str:
    return "not recorded" if s is None else f"{s:.0f} s" if s < 60 else f"{s / 60:.1f} min"


def front_matter(name: str, cfg: Config, res: dict[str, Any]) -> dict[str, Any]:
    """The card's YAML metadata: library, tags, dataset, and model-index results (only what was measured)."""
    cifar = []
    val = res["sets"]["validation"]
    if val:
        cifar.append({"type": "accuracy", "value": round(val["accuracy"], 4), "name": "Validation accuracy"})
    results = [{"task": {"type": "image-classification", "name": "Image Classification"},
                "dataset": {"name": "CIFAR-10 (test split, used as validation)", "type": "cifar10", "split": "test"},
                "metrics": cifar}] if cifar else []
    c = res["corruptions"]
    if c and c.get("mean_corruption_accuracy") is not None:
        results.append({"task": {"type": "image-classification", "name": "Image Classification"},
                        "dataset": {"name": "CIFAR-10 with generated corruptions (CIFAR-10-C style)",
                                    "type": "cifar10", "split": "test"},
                        "metrics": [{"type": "accuracy", "value": round(c["mean_corruption_accuracy"], 4),
                                     "name": "Mean corruption accuracy"}]})
    meta: dict[str, Any] = {"library_name": "pytorch", "pipeline_tag": "image-classification",
                            "tags": ["image-classification", "cifar10", "cifarlab", "safetensors", cfg.model],
                            "datasets": ["cifar10"], "metrics": ["accuracy"]}
    if results:
        meta["model-index"] = [{"name": name, "results": results}]
    return meta


def model_card(rd: RunDir, cfg: Config, checkpoint: str, epoch: int | None, contract: str) -> str:
    """README.md for an EXPORT_DIR: front matter, results, training, use, intended use and limits."""
    res = run_results(rd, checkpoint)
    m = res["metrics"]
    name = f"cifarlab-{rd.path.name}"
    row = study_row(cfg)
    lines = ["---", yaml.safe_dump(front_matter(name, cfg, res), sort_keys=False).rstrip(), "---", "",
             f"# {name}", "",
             f"A CIFAR-10 classifier ({cfg.model}) trained with cifarlab, preset "
             f"`{cfg.preset}`{': ' + cfg.description if cfg.description else ''}. Exported from run "
             f"`{rd.path.name}`, `{checkpoint}.pt`" + (f" (epoch {epoch} of {m.get('epochs_planned', cfg.epochs)})"
                                                      if epoch else "") + f", by cifarlab {__version__}.", ""]
    if m and not m.get("finished", False):
        lines += [f"**Unfinished run**: {m.get('epochs')} of {m.get('epochs_planned')} planned epochs.", ""]

    lines += ["## Results", "", "From the run's own files; nothing here was measured for this card.", "",
              "| set | accuracy | study (Table 2) | source |", "|---|---|---|---|"]
    study = STUDY_TABLE2.get(row or "", (None, None, None))
    for (key, label), theirs in zip(SETS.items(), study):
        r = res["sets"][key]
        n = f" on {r['n']:,} images" if r and r.get("n") else ""
        lines.append(f"| {label} | {_pct(r and r['accuracy'])}{n} | {f'{theirs} %' if theirs else '-'} | "
                     f"{r['source'] if r else '-'} |")
    c, cal = res["corruptions"], res["calibration"]
    if c and c.get("mean_corruption_accuracy") is not None:
        lines.append(f"| Mean corruption accuracy ({len(c.get('accuracy', {}))} corruptions x severities "
                     f"{', '.join(next(iter(c['accuracy'].values()), {}).keys())}; {c.get('subset', '')}, "
                     f"{c.get('n')} images) | {_pct(c['mean_corruption_accuracy'])} (clean {_pct(c.get('clean'))}) "
                     f"| - | eval/robustness.json |")
    else:
        lines.append(f"| Mean corruption accuracy | {NOT_EVALUATED} (`cifarlab robustness`) | - | - |")
    if cal:
        for s, v in cal["sets"].items():
            lines.append(f"| ECE ({cal['n_bins']} bins) on {s} ({v['n']} images), before -> after temperature "
                         f"T = {cal['temperature']} | {v['ece_before']:.4f} -> {v['ece_after']:.4f} | - | "
                         "eval/robustness.json |")
    else:
        lines.append(f"| ECE before / after temperature scaling | {NOT_EVALUATED} (`cifarlab robustness`) | - | - |")
    if cal:
        lines += ["", f"Temperature: {cal['split']}."]

    lines += ["", "## Training", "",
              f"- Data: {_data(m, cfg, res['corruptions'])}.",
              f"- Training images: {m.get('train_images', 'not recorded')}; epochs: {m.get('epochs', '?')} of "
              f"{m.get('epochs_planned', cfg.epochs)}; batch {cfg.batch_size}, {cfg.optimizer} lr {cfg.lr}, "
              f"test-time augmentation: {cfg.tta}.",
              f"- Training time: {_minutes(m.get('train_seconds'))} of epochs"
              + (f" + {_minutes(m['embed_seconds'])} embedding the frozen backbone once"
                 if m.get("embed_seconds") else "")
              + ".",
              f"- Machine: {describe_machine(m.get('machine'))}.",
              *([f"- Pretrained backbone: `{Path(cfg.weights).name}` (ImageNet), then "
                 f"{'the head' if cfg.trainable == 'head' else cfg.trainable.replace('_', ' ') + ' + head'} "
                 "trained on CIFAR-10."] if cfg.weights else []),
              f"- Preset: `{cfg.preset}`" + (f", extends the study's `{cfg.extends}`" if cfg.extends else "") + "."]
    header = preset_header(cfg.preset)
    if header:
        lines.append(f"- The preset says: {header}")
    diff = differences(cfg)
    if row and diff:
        lines += ["", f"Settings that differ from the study's `{row}` preset:", "", f"| key | this run | {row} |",
                  "|---|---|---|"] + [f"| {k} | {ours} | {theirs} |" for k, ours, theirs in diff]
    elif row:
        lines += ["", f"Every setting is the study's `{row}` preset's."]
    else:
        lines += ["", "Not one of the study's presets (BASE, IMP1, IMP2, MNET1, MNET2): no study figures apply."]
    lines += ["", "The resolved config is `config.yaml` beside this card.", ""]

    lines += ["## How to use", "", f"Input contract: {contract}.", "", "With cifarlab installed:", "", "```python",
              "from cifarlab.export.load import load_export", "", "model = load_export(\"THIS_FOLDER\")",
              "logits = model.predict(images)  # uint8 tensor (N, 3, 32, 32)", f"classes = {list(CLASSES)}", "```",
              "", "or `cifarlab evaluate THIS_FOLDER --data CIFAR10 [--testset PHOTOS]` to score it. The weights "
              "(`model.safetensors`) are the network's state dict, loadable into "
              "`cifarlab.models.build_model(config, 'cpu', pretrained=False)`; for runtimes without cifarlab, "
              "`cifarlab export RUN_DIR --format onnx` writes a self-contained graph.", ""]

    photos = res["sets"]["test"]
    lines += ["## Intended use and limits", "",
              "- Research and teaching: a reproduction of the study *Image Classification: CIFAR-10, Convolutional "
              "Neural Networks*, to compare architectures and training recipes on CIFAR-10.",
              "- Inputs are 32x32 images of the ten CIFAR-10 classes; anything else is still forced into one of them "
              "(no 'unknown' class). Photos must be centre-cropped and downscaled to 32x32 first, as "
              "`cifarlab evaluate --testset` does.",
              "- CIFAR-10 accuracy does not carry over to real photos"
              + (f": on the study's real-world photos this model scores {_pct(photos['accuracy'])}." if photos else
                 " (not measured for this model: `cifarlab evaluate RUN_DIR --testset PHOTOS --name test`).")
              + " Softmax scores are not calibrated probabilities unless divided by the fitted temperature.",
              "- The validation set is CIFAR-10's test split, as in the study; the presets were tuned on it"
              + (" and it chose this epoch (`best.pt`)" if checkpoint == "best" else "")
              + ", so its accuracy is an optimistic estimate, not an untouched test score.",
              "- Not for decisions about people or any safety-relevant use.", ""]
    return "\n".join(lines)
