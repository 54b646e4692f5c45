#!/usr/bin/env bash
# The first check on a machine with an NVIDIA GPU (about 5-10 minutes):
#   1. the GPU tests (pytest -m gpu: every estimator family on every built-in model on cuda,
#      pinned batches, evaluation chunks sized by free memory, GPU discovery, run.py --device cuda);
#   2. a 2-job grid through manager.py on the GPU (--processes 2 --max_gpus 1, run.py --device cuda),
#      each job's status, device and CUDA_VISIBLE_DEVICES printed;
#   3. bench_step.py --device cuda: step time per estimator at K = 5 / 50 / 500 and peak GPU memory.
#
#   benchmarks/gpu_check.sh             # on the GPU machine; exits 2 at once when torch sees no CUDA
#   benchmarks/gpu_check.sh --dry-run   # the same steps on the CPU (small), to check the script itself
#
# Environment: PYTHON (default: .venv/bin/python, else python3), DATA_ROOT (default ../shared/data),
# OUT (where the grid's runs go; default a fresh temporary folder), BENCH_REPEATS (default 20).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
dry=0
case "${1:-}" in
  --dry-run) dry=1 ;;
  "") ;;
  *) echo "usage: benchmarks/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
esac
if [[ -n "${PYTHON:-}" ]]; then py="$PYTHON"; elif [[ -x .venv/bin/python ]]; then py=.venv/bin/python; else py=python3; fi
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
data_root="${DATA_ROOT:-../shared/data}"
out="${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/ovis-gpu-check.XXXXXX")}"
repeats="${BENCH_REPEATS:-20}"

# fail fast: no CUDA, no GPU check
if ! cuda_info="$("$py" -c 'import torch, sys
ok = torch.cuda.is_available()
print(f"torch {torch.__version__}, CUDA build {torch.version.cuda}, " + (
    f"{torch.cuda.device_count()} device(s): " + ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    if ok else "no CUDA device visible"))
sys.exit(0 if ok else 1)')"; then
  if [[ $dry -eq 0 ]]; then
    echo "gpu_check.sh: error: CUDA is not available here ($cuda_info); run it on a machine with an NVIDIA GPU and a CUDA build of torch, or use --dry-run to check the script on the CPU" >&2
    exit 2
  fi
fi
if [[ $dry -eq 1 ]]; then
  device=cpu; max_gpus=0; ks=5; ids="reinforce,ovis-gamma1,pathwise-iwae"; repeats=2
  echo "# gpu_check.sh --dry-run: every step on the CPU ($cuda_info)"
else
  device=cuda; max_gpus=1; ks=5,50,500; ids=""
  echo "# gpu_check.sh: $cuda_info"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=index,name,utilization.gpu,memory.used,memory.total --format=csv
fi
echo "# python $py, runs in $out"

echo; echo "## 1. GPU tests (pytest -m gpu)"
"$py" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py

echo; echo "## 2. a 2-job grid on $device (manager.py --processes 2 --max_gpus $max_gpus)"
mkdir -p "$out"
cat > "$out/gpu-check.json" <<EOF
{"description": "gpu_check.sh: two short GMM runs on $device",
 "args": ["--estimator ovis-gamma1", "--estimator vimco-arithmetic"],
 "global": "--dataset gmm --mini --iw 5 --nsteps 200 --bs 32 --iw_test 500 --iw_valid 500 --max_eval 64 --silent --no_tensorboard --device $device",
 "parameters": {"seed": [1]}}
EOF
start=$(date +%s)
"$py" manager.py --exp "$out/gpu-check.json" --processes 2 --max_gpus "$max_gpus" --root "$out/runs" \
  --data_root "$data_root" --no_progress --rf 2> "$out/manager.log" || { tail -30 "$out/manager.log"; exit 1; }
echo "grid wall time: $(( $(date +%s) - start )) s"
grep -E "devices:|asked for GPUs" "$out/manager.log" | sed 's/^[^m]*manager: /  /'
"$py" - "$out/runs/gpu-check" <<'EOF'
import json, sys
from pathlib import Path
from ovis.experiments.queue import JobQueue
exp = Path(sys.argv[1])
jobs = JobQueue(exp).all_jobs()
bad = [d for d in jobs if d["status"] != "success"]
for d in jobs:
    cfg = json.loads((Path(d["run_dir"]) / "config.json").read_text()) if d.get("run_dir") else {}
    rows = [json.loads(l) for l in (Path(d["run_dir"]) / "metrics.jsonl").read_text().splitlines()] if d.get("run_dir") else []
    test = [r["metrics"].get("loss/L_k") for r in rows if r["split"] == "test"]
    print(f"  job {d['job_id']}: {d['status']}, worker {d['worker']}, slot {d['device']} (CUDA_VISIBLE_DEVICES={'' if d['device'] == 'cpu' else d['device']!r}), "
          f"run.py device {cfg.get('run', {}).get('device')}, test L_500 {test[-1] if test else None}")
if len(jobs) != 2 or bad:
    sys.exit(f"gpu_check.sh: the grid did not succeed: {[(d['job_id'], d['status'], d.get('error')) for d in bad]}")
EOF

echo; echo "## 3. bench_step.py --device $device (K = $ks; median step ms, peak MB)"
"$py" benchmarks/bench_step.py --device "$device" --only device --ks "$ks" --repeats "$repeats" ${ids:+--ids "$ids"}
echo; echo "# gpu_check.sh: done"
