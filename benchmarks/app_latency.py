"""`cifarlab app` latency on the CPU: what a person waits for after dropping a photo (decode, the
study's blur, 32x32 both ways, then every model's top-5 unfiltered and blurred), and for each
explanation (Grad-CAM, Grad-CAM++, Score-CAM, occlusion, the activation grid) of a MobileNet and an IMP.

    python benchmarks/app_latency.py --weights ../shared/data/pretrained/mobilenet_v1_1.0_224_quant_embedding_extractor.tflite \
        --photos ../shared/data/realworld [--runs RUN_DIR ...] [--threads 2] [--repeat 5]

Without --runs it builds the five study networks (BASE, IMP1, IMP2, MNET1, MNET2; MobileNets with the
given pretrained backbone, heads untrained: the cost does not depend on the weights' values) in a
temporary folder. Each figure is the median over --repeat runs (photos: one per class, cycled) after
one warm-up; the models are loaded once, as the app does. Writes JSON (default
benchmarks/results/app_latency.json).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from cifarlab import CLASSES
from cifarlab.app import METHODS, Lab, prepare, read_photo
from cifarlab.app.lab import answer
from cifarlab.config import resolve_config, save_config
from cifarlab.io import save_checkpoint
from cifarlab.models.build import build_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _meta import loadavg, run_meta  # noqa: E402

PRESETS = ("base", "imp1", "imp2", "mnet1", "mnet2")


def build_runs(root: Path, weights: str) -> list[Path]:
    """The five study networks as run directories (config.yaml + last.pt), as `cifarlab train` leaves them."""
    runs = []
    for preset in PRESETS:
        run = root / preset
        run.mkdir()
        cfg = resolve_config(preset, [f"weights={weights}"] if preset.startswith("mnet") else [])
        save_config(cfg, run / "config.yaml")
        save_checkpoint(run / "last.pt", {"model": build_model(cfg, torch.device("cpu")).state_dict()})
        runs.append(run)
    return runs


def timed(fn, repeat: int) -> dict[str, float]:
    fn(0)  # warm-up: allocator, oneDNN kernels
    times = []
    for i in range(repeat):
        t = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t)
    return {"median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4),
            "max_s": round(max(times), 4), "n": repeat}


def one_per_class(root: Path) -> list[Path]:
    return [sorted(p for p in (root / c).iterdir() if not p.name.startswith("."))[0]
            for c in CLASSES if (root / c).is_dir()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", help="MobileNet v1 weights for the built MNETs (.tflite, .h5); not with --runs")
    ap.add_argument("--runs", nargs="+", help="time these run directories instead of building the five")
    ap.add_argument("--photos", required=True, help="a test set DIR/<class>/<photo> (one photo per class is used)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--methods", default=",".join(METHODS), help="explanations to time (default: all)")
    ap.add_argument("--out", default="benchmarks/results/app_latency.json")
    args = ap.parse_args()
    if not args.runs and not args.weights:
        ap.error("give --weights (to build the five study networks) or --runs")
    load0 = loadavg()
    torch.set_num_threads(args.threads)
    photos = one_per_class(Path(args.photos))

    with tempfile.TemporaryDirectory() as tmp:
        runs = args.runs or build_runs(Path(tmp), args.weights)
        t = time.perf_counter()
        lab = Lab(runs)
        load_s = time.perf_counter() - t
        inputs = [prepare(read_photo(p), p.name) for p in photos]

        def photo_to_answers(i: int) -> None:  # what one drop of a photo costs, end to end
            p = photos[i % len(photos)]
            lab.predict_all(prepare(read_photo(p), p.name))

        result = {"threads": args.threads, "models": [m.label for m in lab.models], "photos": [str(p) for p in photos],
                  "load_models_s": round(load_s, 2),
                  "predict": {"photo_to_all_answers": timed(photo_to_answers, args.repeat),
                              "predict_all_only": timed(lambda i: lab.predict_all(inputs[i % len(inputs)]), args.repeat),
                              "per_model": {m.label: timed(lambda i, m=m: answer(m, inputs[i % len(inputs)]), args.repeat)
                                            for m in lab.models}},
                  "explain": {}}
        picks = [m for m in lab.models if m.input_size > 32][:1] + [m for m in lab.models if m.input_size == 32][-1:]
        for m in picks:
            row = {"input_size": m.input_size, "layer": m.default_layer()}
            for method in [x for x in args.methods.split(",") if x]:
                row[method] = timed(lambda i, m=m, method=method: lab.explain(m.label, inputs[i % len(inputs)], method),
                                    args.repeat)
                print(f"{m.label} {method}: {row[method]['median_s']:.3f} s", flush=True)
            row["activation_grid"] = timed(lambda i, m=m: lab.activation_grid(m.label, inputs[i % len(inputs)]),
                                           args.repeat)
            result["explain"][m.label] = row
    result.update(torch=torch.__version__, **run_meta(load0))
    print(f"photo -> all {len(lab.models)} models' answers: {result['predict']['photo_to_all_answers']['median_s']:.3f} s "
          f"(predict_all alone {result['predict']['predict_all_only']['median_s']:.3f} s), threads={args.threads}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
