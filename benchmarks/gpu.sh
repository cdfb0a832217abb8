#!/usr/bin/env bash
# The GPU benchmark in one command, at most about 7.5 minutes (HARD_S + start-up) on one H200 or H100:
#   - the CPU-sized matrix (configs/benchmarks/rows.yaml, suite cpu) with seeds 0 1 2, on the GPU,
#     in LANES (8) parallel lanes pulling (row, seed) from one queue (the small models leave the GPU
#     mostly idle; lanes share it). Measured on an H200 with 5 lanes: seed 0 of all 16 rows took
#     about 5 minutes, so 3 seeds need a second call: SEEDS="1 2" PAPER=0;
#   - the paper-resolution rows (suite paper: DCAT @380 px, DRIFA-Net zip @128 px, epochs capped
#     in rows.yaml), one lane each, from scratch (pretrained weights need the internet).
# Lanes start no new run after BUDGET_S seconds and are killed at HARD_S; every finished run is
# already written, so a cut loses only runs in flight (seed-major order: extra seeds are cut first).
# train.deterministic is off for speed: CUDA has no deterministic backward for bilinear interpolation
# and adaptive average pooling (DCAT uses both), so the default "warn" would only warn there anyway.
#
#   DUALFUSE_DATA=/path/to/data OUT=/path/to/results [SEEDS="1 2" PAPER=0] [LANES=8] bash benchmarks/gpu.sh
#   (then copy $OUT/accuracy_gpu_*.json to docs/results/ and run python benchmarks/make_docs.py)
#
# Data needed under DUALFUSE_DATA (about 85 MB): medmnist/pneumoniamnist.npz, medmnist/breastmnist.npz,
# brain-tumor-mri/ (training/ and testing/), lung-ct-iqothnccd/.
set -euo pipefail
: "${DUALFUSE_DATA:?set DUALFUSE_DATA to the data root (medmnist/, brain-tumor-mri/, lung-ct-iqothnccd/)}"
cd "$(dirname "$0")/.."
export DUALFUSE_DATA PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if [[ -n "${PYTHON:-}" ]]; then PY=$PYTHON; elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
RESULTS=${OUT:-docs/results}
RUNS=${RUNS_DIR:-${TMPDIR:-/tmp}/dualfuse-gpu-runs}
BUDGET_S=${BUDGET_S:-270}
HARD_S=${HARD_S:-420}
LANES=${LANES:-8}
SEEDS=${SEEDS:-0 1 2}
CLAIMS="$RUNS/claims-$$"
mkdir -p "$RESULTS"
"$PY" -c "import torch, dualfuse; assert torch.cuda.is_available(), 'no CUDA device'; print('GPU:', torch.cuda.get_device_name(0), 'torch', torch.__version__)"

common=(--accelerator gpu --devices 1 --runs-dir "$RUNS" --budget-s "$BUDGET_S" --set train.deterministic=false)
lane() {  # lane NAME ARGS...: one accuracy.py process with its own results file and log
  local name=$1; shift
  timeout -k 15 "$HARD_S" "$PY" benchmarks/accuracy.py "$@" "${common[@]}" --out "$RESULTS/accuracy_gpu_$name.json" \
    > "$RESULTS/gpu_$name.log" 2>&1 || echo "lane $name ended with status $? (see $RESULTS/gpu_$name.log)"
}
if [[ "${PAPER:-1}" == 1 ]]; then  # PAPER=0: matrix only (e.g. the second call, for seeds 1 2)
  lane paper_dcat --rows paper-dcat-brain_mri --seeds 0 --threads 4 --set data.num_workers=4 &
  lane paper_drifa --rows paper-drifa_net-zip --seeds 0 --threads 4 --set data.num_workers=4 &
fi
for ((i = 0; i < LANES; i++)); do
  # shellcheck disable=SC2086  # SEEDS is a list
  lane "matrix$i" --suite cpu --seeds $SEEDS --claim-dir "$CLAIMS" --threads 1 &
done
wait
ls -l "$RESULTS"/accuracy_gpu_*.json 2>/dev/null || echo "no results written"
"$PY" benchmarks/make_docs.py --results "$RESULTS" --out "$RESULTS/benchmarks_gpu.md" || true
