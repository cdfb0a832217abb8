#!/usr/bin/env bash
# The GPU benchmark in one command, at most about 7.5 minutes (HARD_S + start-up) on one H200 or H100:
#   - the CPU-sized matrix (configs/benchmarks/rows.yaml, suite cpu) with seeds 0 1 2, on the GPU,
#     in LANES (8) parallel lanes pulling (row, seed) from one queue (the small models leave the GPU
#     mostly idle; lanes share it). Measured on an H200 with 5 lanes: seed 0 of all 16 rows took
#     about 5 minutes, so 3 seeds need a second call: SEEDS="1 2" PAPER=0;
#   - the paper-resolution rows (suite paper: DCAT @380 px, DRIFA-Net zip @128 px, epochs capped
#     in rows.yaml), one lane each, from scratch (pretrained weights need the internet).
#   SUITE=gpu128 PAPER=0 runs the rows of suite gpu128 instead of cpu: TB and HAM10000 at their native
#     128 px, DCAT, its backbones, ResNet-18 and concat fusion, 2 loader workers per lane.
# Lanes start no new run after BUDGET_S seconds and are killed at HARD_S; every finished run is
# already written, so a cut loses only runs in flight (seed-major order: extra seeds are cut first).
# train.deterministic is off for speed: CUDA has no deterministic backward for bilinear interpolation
# and adaptive average pooling (DCAT uses both), so the default "warn" would only warn there anyway.
#
#   DUALFUSE_DATA=/path/to/data OUT=/path/to/results [SEEDS="1 2" PAPER=0] [SUITE=gpu128] [LANES=8] bash benchmarks/gpu.sh
#   (the lanes' records end merged in $OUT/accuracy_gpu_$SUITE.json, their logs in $OUT/gpu_$SUITE.log: merge
#   that file into docs/results/ and run python benchmarks/make_docs.py)
#
# Data needed under DUALFUSE_DATA: suite cpu (about 85 MB): medmnist/pneumoniamnist.npz, medmnist/breastmnist.npz,
# brain-tumor-mri/ (training/ and testing/), lung-ct-iqothnccd/; suite gpu128 (47 MB): tb-cxr/, ham10000/.
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
SUITE=${SUITE:-cpu}
[[ "$SUITE" == cpu ]] && WORKERS=0 || WORKERS=2  # cpu rows read arrays in-process; 128-px rows decode files
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
  lane "${SUITE}_lane$i" --suite "$SUITE" --seeds $SEEDS --claim-dir "$CLAIMS" --threads 1 \
    --set data.num_workers=$WORKERS &
done
wait
# One results file and one log per suite, whatever the number of lanes.
"$PY" - "$RESULTS" "$SUITE" <<'MERGE'
import json, sys
from pathlib import Path
sys.path.insert(0, "benchmarks")
from _common import merge_records, read_json, write_json
results, suite = Path(sys.argv[1]), sys.argv[2]
merged = results / f"accuracy_gpu_{suite}.json"
data = read_json(merged, {"records": []})
lanes = sorted(results.glob(f"accuracy_gpu_{suite}_lane*.json"))
for lane in lanes:
    data["records"] = merge_records(data["records"], json.loads(lane.read_text())["records"],
                                    lambda r: (r["row"], r["seed"], r["device"]))
    lane.unlink()
write_json(merged, data)
logs = sorted(results.glob(f"gpu_{suite}_lane*.log"))
(results / f"gpu_{suite}.log").write_text("".join(f"==> {log.name}\n{log.read_text()}" for log in logs))
for log in logs:
    log.unlink()
print(f"{len(data['records'])} record(s) in {merged}")
MERGE
ls -l "$RESULTS"/accuracy_gpu_*.json 2>/dev/null || echo "no results written"
# No docs rendered here: make_docs' paired bootstraps took minutes of device time (over 4 on the H200 for the
# 30 gpu128 records, 85 s on a 2-core CPU); render them where the results are merged.
