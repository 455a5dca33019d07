#!/usr/bin/env bash
# bench/gpu.sh: every GPU figure of the benchmarks in one go, written to docs/bench-gpu.md with the GPU named.
# Under 10 minutes by construction: each step has a time limit (200 + 360 + 30 s); not yet run on a GPU.
# Run it from the repository root after `make setup` on the GPU host:
#
#   bench/gpu.sh                       # bench-mine with vLLM, then bench-train: ours vs TRL, and ZeRO-2
#   bench/gpu.sh --no-trl              # a host where TRL's venv (.cache/bench-venvs/trl) cannot be installed
#   bench/gpu.sh --dry-run             # print each step's command; runs nothing, needs no GPU (tests use it)
#   bench/gpu.sh --cpu                 # the same steps at tiny sizes on a CPU: checks the path, not the figures
#
# Steps: 1. nvidia-smi names the GPU (no GPU: stop, unless --cpu or --dry-run);  2. bench/bench_mine.py
# (paper loop, transformers static and continuous, vLLM) -> data/bench/mine.json;  3. bench/bench_train.py
# (ours vs TRL SFTTrainer, padding and packing, 3 alternating rounds; ZeRO-2 on every GPU) ->
# data/bench/train-gpu.json;  4. bench/gpu_report.py renders both, with the CPU figures of
# data/bench/train.json when this machine has them, into docs/bench-gpu.md (--out to change).
# Each step stops at its own time limit (timeout); a failed step stops the script with its exit status.
set -euo pipefail

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; }

dry_run=0 cpu=0 trl=1 out=docs/bench-gpu.md python=.venv/bin/python
while (($#)); do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --cpu) cpu=1 ;;
    --no-trl) trl=0 ;;
    --out) [[ $# -ge 2 && -n "$2" ]] || { echo "gpu.sh: --out needs a file" >&2; exit 2; }; out=$2; shift ;;
    --python) [[ $# -ge 2 && -n "$2" ]] || { echo "gpu.sh: --python needs a path" >&2; exit 2; }; python=$2; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "gpu.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

cd "$(dirname "$0")/.."
if ((cpu)); then  # tiny sizes: the whole path in minutes on a CPU
  mine_args=(--questions 4 --paper-questions 2 --max-new-tokens 16 --batch-size 4 --slots 4)
  train_args=(--max-steps 2 --max-length 256 --repeats 1 --pairs packing)
  gpu="none (--cpu: tiny sizes, path check only)"
else
  mine_args=(--questions 256 --paper-questions 16 --skip-dtype-static)  # one static run only: the step has 200 s
  train_args=(--max-steps 12 --repeats 3)
fi
((trl)) || train_args+=(--no-trl)

if ((dry_run)); then
  gpu="(dry run)"
elif ((!cpu)); then
  if ! command -v nvidia-smi >/dev/null || ! gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version \
      --format=csv,noheader 2>/dev/null | head -1) || [[ -z "$gpu" ]]; then
    echo "gpu.sh: no GPU here (nvidia-smi finds none); --cpu checks the path at tiny sizes" >&2
    exit 3
  fi
fi
[[ $dry_run == 1 || -x "$python" ]] || { echo "gpu.sh: no python at $python: run make setup first" >&2; exit 2; }

step() {  # step SECONDS COMMAND...: run it (or print it under --dry-run) with a time limit
  local limit=$1
  shift
  echo "+ timeout $limit$(printf ' %q' "$@")"
  ((dry_run)) || timeout "$limit" "$@"
}

echo "GPU: $gpu"
step 200 "$python" bench/bench_mine.py "${mine_args[@]}"
step 360 "$python" bench/bench_train.py "${train_args[@]}" --out data/bench/train-gpu.json
step 30 "$python" bench/gpu_report.py --gpu "$gpu" --mine data/bench/mine.json \
  --train data/bench/train-gpu.json --cpu-train data/bench/train.json --out "$out" \
  --commit "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
