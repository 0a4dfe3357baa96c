#!/usr/bin/env bash
# The main job: the whole study. Trains BASE, IMP1, IMP2, MNET1 and MNET2, evaluates them on the
# validation set and the real-photo test set (unfiltered and filtered), writes Table 2 and the report
# to study/. Finished runs are reused and an interrupted one resumes, so it can simply be run again.
# Without --profile it runs `study` (the paper's recipes) on a CUDA machine and `laptop` (the same networks,
# data and augmentation, recipes chosen for time-to-accuracy, about 90 minutes on 2 CPU cores) otherwise,
# and says which, why and its ETA before training. Extra arguments go to `cifarlab reproduce`
# (e.g. --profile quick, --data, --testset, --weights, --dry-run).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/cifarlab reproduce --out study "$@"
