#!/usr/bin/env bash
# Train on every GPU of one machine with DeepSpeed ZeRO (or N CPU processes when there is no GPU).
#
#   launch/single_node.sh 8 --config configs/train/paper.yaml --deepspeed configs/deepspeed/zero3.json
#   launch/single_node.sh 2 --task svamp --max-steps 20 --deepspeed configs/deepspeed/zero2.json   # on a CPU
#
# The same with torchrun:  torchrun --nproc_per_node 8 -m train.train --config ... --deepspeed ...
set -euo pipefail
nproc=${1:?usage: launch/single_node.sh NPROC [fair train flags...]}
shift
here=$(cd "$(dirname "$0")/.." && pwd)
if ! command -v nvidia-smi >/dev/null 2>&1; then
  # CPU: DeepSpeed's CPU accelerator over gloo; one thread per process keeps two processes off each other's cores.
  export DS_ACCELERATOR=cpu OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
fi
exec "$here/.venv/bin/deepspeed" --num_gpus "$nproc" --module train.train "$@"
