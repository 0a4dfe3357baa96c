#!/usr/bin/env bash
# GPU check (<= 5 minutes on one modern GPU): train the full-width fast recipe (fast94) on CUDA with
# bf16 autocast and channels_last, time it and print the validation accuracy (target: 94 %).
#
#   bash benchmarks/gpu_check.sh [DATA] [extra `cifarlab train` flags...]
#
# DATA defaults to $CIFARLAB_DATA, else ../shared/data/cifar10-jpeg.tar.gz (or shared/data/... when
# the repo sits next to it). Needs an installed cifarlab (bash scripts/setup.sh, or the .venv here).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .venv/bin/activate ] && . .venv/bin/activate
DATA="${1:-${CIFARLAB_DATA:-}}"
if [ -z "$DATA" ]; then
  for d in ../shared/data/cifar10-jpeg.tar.gz shared/data/cifar10-jpeg.tar.gz; do [ -e "$d" ] && DATA="$d" && break; done
fi
[ -n "$DATA" ] || { echo "error: no CIFAR-10 found; pass its path as the first argument" >&2; exit 2; }
shift || true
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'error: no CUDA device visible to torch')"
python -c "import torch; print('torch', torch.__version__, 'on', torch.cuda.get_device_name(0))"
OUT="${OUT:-$(mktemp -d)}/fast94-gpu"
export CIFARLAB_HOME="${CIFARLAB_HOME:-$(mktemp -d)}"
python -c "from cifarlab.data import load_cifar10; load_cifar10('$DATA')"  # decode once, not timed
start=$(date +%s.%N)
cifarlab train --preset fast94 --device cuda --data "$DATA" --out "$OUT" --quiet "$@"
end=$(date +%s.%N)
python - "$OUT" "$start" "$end" <<'PY'
import csv, json, sys
out, start, end = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
m = json.load(open(f"{out}/metrics.json"))
hist = list(csv.DictReader(open(f"{out}/history.csv")))
print("epoch  val_acc  seconds")
for r in hist:
    print(f"{r['epoch']:>5}  {float(r['val_acc']):.4f}  {float(r['seconds']):7.1f}")
print(f"fast94 on CUDA: val accuracy {m['val_accuracy']:.4f} (tta {m['tta']}), training {m['train_seconds']:.1f} s, "
      f"whole command {end - start:.1f} s (incl. start-up); target 0.94 {'reached' if m['val_accuracy'] >= 0.94 else 'NOT reached'}")
PY
