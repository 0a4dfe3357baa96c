"""Peak memory (and seconds) of decoding a 50 MP photo and the study's full-resolution blur on it.

Each variant runs in a fresh process: `new`, the blur in strips (cifarlab.data.testset.study_blur), and
`old`, the whole-plane blur as of commit OLD_COMMIT (read from git). Peak RSS is the kernel's VmHWM, so
it counts torch's allocations, which tracemalloc cannot see; it is reset between phases
(/proc/self/clear_refs) to give each phase its own peak. The blurred pixels' SHA-256 shows whether the
variants agree bit for bit. Default photo: a synthetic 8660 x 5773 (50.0 MP) JPEG of noise on gradients.
RSS figures hold on a busy machine; seconds do not (the JSON records the load average).

    python benchmarks/blur_memory.py                      # writes benchmarks/results/blur_memory.json
    python benchmarks/blur_memory.py --size 1200x800 --out /tmp/smoke.json   # a quick smoke run
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _meta import REPO, loadavg, run_meta

OLD_COMMIT = "7534e70"  # the last commit whose study_blur convolved whole planes
MB = 1 << 20


def make_photo(path: Path, w: int, h: int) -> None:
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    a = np.empty((h, w, 3), np.uint8)
    gx, gy = np.linspace(0, 200, w, dtype=np.float32)[None], np.linspace(0, 150, h, dtype=np.float32)[:, None]
    for c in range(3):  # gradients so the blur has structure to keep, noise so JPEG cannot shrink it away
        plane = gx * (0.5 + 0.25 * c) + gy * (1 - 0.3 * c) + rng.normal(0, 25, (h, w)).astype(np.float32)
        a[:, :, c] = np.clip(plane, 0, 255)
    Image.fromarray(a).save(path, quality=90)


# ---------------------------------------------------------------- one variant, in its own process

def _status(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _peak() -> int:
    """Peak RSS since the last reset, bytes (VmHWM; without /proc, ru_maxrss: since the process began)."""
    hwm = _status("VmHWM")
    if hwm is not None:
        return hwm
    import resource
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _testset_module(variant: str):
    if variant == "new":
        import cifarlab.data.testset as mod
        return mod
    src = subprocess.run(["git", "show", f"{OLD_COMMIT}:src/cifarlab/data/testset.py"], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "testset_old.py"
        path.write_text(src)
        spec = importlib.util.spec_from_file_location("testset_old", path)
        mod = sys.modules["testset_old"] = importlib.util.module_from_spec(spec)  # dataclasses look it up
        spec.loader.exec_module(mod)
    return mod


def child(variant: str, photo: Path, threads: int) -> dict:
    import numpy as np
    import torch
    from cifarlab.data.images import load_photo
    torch.set_num_threads(threads)
    mod = _testset_module(variant)
    out = {"variant": variant, "rss_after_imports_mb": _status("VmRSS") // MB if _status("VmRSS") else None}
    resets = _reset_peak()
    t = time.perf_counter()
    img = load_photo(photo)
    out["decode_seconds"] = round(time.perf_counter() - t, 2)
    out["peak_rss_decode_mb"] = _peak() // MB
    resets = resets and _reset_peak()
    t = time.perf_counter()
    blurred = mod.study_blur(img)
    out["blur_seconds"] = round(time.perf_counter() - t, 2)
    out["peak_rss_blur_mb"] = _peak() // MB if resets else None  # with no reset: the decode's peak is in it
    out["peak_rss_process_mb"] = max(out["peak_rss_decode_mb"], out["peak_rss_blur_mb"] or _peak() // MB)
    out["blurred_sha256"] = hashlib.sha256(np.asarray(blurred).tobytes()).hexdigest()
    out["photo"] = f"{img.width}x{img.height}"
    return out


# ---------------------------------------------------------------- driver

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photo", type=Path, help="a photo to use (default: a synthetic one of --size)")
    ap.add_argument("--size", default="8660x5773", help="WxH of the synthetic photo (default 50 MP)")
    ap.add_argument("--variants", nargs="+", default=["old", "new"], choices=["old", "new"])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (load_testset blurs with 1)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/blur_memory.json")
    ap.add_argument("--child", choices=["old", "new"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.photo, args.threads)))
        return

    load0 = loadavg()
    with tempfile.TemporaryDirectory() as tmp:
        photo = args.photo
        if photo is None:
            w, h = (int(v) for v in args.size.lower().split("x"))
            photo = Path(tmp) / f"synthetic_{w}x{h}.jpg"
            make_photo(photo, w, h)
        runs = []
        for v in args.variants:
            r = subprocess.run([sys.executable, __file__, "--child", v, "--photo", str(photo),
                                "--threads", str(args.threads)], stdout=subprocess.PIPE, text=True, check=True)
            runs.append(json.loads(r.stdout.splitlines()[-1]))
            print(json.dumps(runs[-1]), flush=True)
    import torch
    hashes = {r["blurred_sha256"] for r in runs}
    result = {"photo": str(args.photo) if args.photo else f"synthetic {args.size} JPEG (noise on gradients)",
              "threads": args.threads, "old_commit": OLD_COMMIT, "runs": runs,
              "bit_identical": len(hashes) == 1 if len(runs) > 1 else None,
              "note": "peak RSS (VmHWM) is valid on a busy machine; seconds are not, see loadavg",
              "torch": torch.__version__, **run_meta(load0)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"bit-identical: {result['bit_identical']}; wrote {args.out}")


if __name__ == "__main__":
    main()
