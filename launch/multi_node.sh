#!/usr/bin/env bash
# Train across several machines listed in a DeepSpeed hostfile, launched from the first one over ssh.
#
#   cat hostfile          # one line per node: its name and how many GPUs ("slots") it has
#   node-a slots=8
#   node-b slots=8
#   launch/multi_node.sh hostfile --config configs/train/paper.yaml --deepspeed configs/deepspeed/zero3.json
#
# Needs passwordless ssh between the nodes, this repository (with its .venv) at the same path on each, and
# the data and checkpoints on a shared file system. MASTER_PORT picks the rendezvous port (default 29500).
set -euo pipefail
hostfile=${1:?usage: launch/multi_node.sh HOSTFILE [fair train flags...]}
shift
here=$(cd "$(dirname "$0")/.." && pwd)
master=$(awk 'NF && $1 !~ /^#/ {print $1; exit}' "$hostfile")
exec "$here/.venv/bin/deepspeed" --hostfile "$hostfile" --master_addr "$master" \
  --master_port "${MASTER_PORT:-29500}" --module train.train "$@"
