"""Visualisation speed on the CPU: 16 filter images of an IMP layer, and an occlusion map of one photo.

    python benchmarks/viz_speed.py --imp runs/imp1 --mnet runs/mnet2 --photo photo.jpg [--threads 1 2]

Each figure is the median of --repeat runs after one warm-up; the model and photo are loaded once.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from cifarlab.viz import attribution, filters, load_images, load_probe


def timed(fn, repeat: int) -> float:
    fn()  # warm-up: allocator, oneDNN kernels
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--imp", required=True, help="an IMP run directory")
    ap.add_argument("--mnet", help="a MobileNet run directory (optional)")
    ap.add_argument("--photo", required=True)
    ap.add_argument("--layer", default="elu3", help="IMP layer for the filter images (default: elu3)")
    ap.add_argument("--steps", type=int, default=128, help="filter steps (the CLI default)")
    ap.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    photo = load_images(args.photo)
    for threads in args.threads:
        torch.set_num_threads(threads)
        for run in [args.imp] + ([args.mnet] if args.mnet else []):
            probe = load_probe(run)
            x = probe.to_input(photo.x)[0]
            target = int(probe.probs(x[None]).argmax())
            occ = timed(lambda: attribution.occlusion(probe, x, target), args.repeat)
            patch, stride = attribution.patch_and_stride(probe.input_size, None, None)
            print(f"{probe.label} threads={threads}: occlusion of one photo at {probe.input_size} px "
                  f"(patch {patch}, stride {stride}, {((probe.input_size - patch) // stride + 1) ** 2} positions): "
                  f"{occ:.2f} s")
            if run == args.imp:
                layer = probe.layer(args.layer)
                f = timed(lambda: filters.dream(probe, layer, torch.arange(16), steps=args.steps), max(1, args.repeat - 2))
                print(f"{probe.label} threads={threads}: 16 filter images of {layer.name} "
                      f"({'x'.join(map(str, layer.shape))}), {args.steps} steps: {f:.2f} s")


if __name__ == "__main__":
    main()
