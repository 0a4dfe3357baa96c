#!/usr/bin/env bash
# The main job: train the study's IMP2 preset on CIFAR-10 and evaluate it on the validation set.
# Data: --data PATH, else $CIFARLAB_DATA, else the cache folder (downloaded there when online).
# Extra arguments go to `cifarlab train` (e.g. --data ../shared/data/cifar10-jpeg.tar.gz --epochs 5).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
RUN=${RUN_DIR:-runs/imp2}
if [ -f "$RUN/config.yaml" ]; then
  .venv/bin/cifarlab train --resume "$RUN" "$@"
else
  .venv/bin/cifarlab train --preset imp2 --out "$RUN" "$@"
fi
.venv/bin/cifarlab evaluate "$RUN"
