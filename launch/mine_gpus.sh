#!/usr/bin/env bash
# Mine on every GPU of one machine: one `fair mine --shard i/N` per group of TP GPUs, then `fair merge`.
#
#   launch/mine_gpus.sh --task gsm8k --model meta-llama/Llama-2-7b-chat-hf --engine vllm    # 8 GPUs, 8 shards
#   TP=4 launch/mine_gpus.sh --task gsm8k --model meta-llama/Llama-2-70b-chat-hf --engine vllm  # 2 shards
#   GPUS=0,1,2,3 launch/mine_gpus.sh --config configs/mine.yaml task=svamp                   # these GPUs only
#
# Each shard pins its TP consecutive GPUs with CUDA_VISIBLE_DEVICES and runs its own vLLM engine (tensor
# parallel over them when TP > 1); N = GPUs / TP. Give the flags you would give `fair mine`, but not --shard
# or --tensor-parallel-size (set TP). Shard i logs to $LOG_DIR/mine-shard-i-of-N.log (default logs/). When
# every shard has succeeded, `fair merge` with the same flags joins them into data/<task>/<student>/ (or
# --out); if one fails, the script says which and stops: rerun it, and finished shards have nothing to do.
#   GPUS  comma-separated GPU ids (default: $CUDA_VISIBLE_DEVICES, else every GPU nvidia-smi lists)
#   TP    GPUs per shard (default 1)       FAIR  the fair command (default .venv/bin/fair of this checkout)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
fair=${FAIR:-$here/.venv/bin/fair}
tp=${TP:-1}
log_dir=${LOG_DIR:-logs}
for arg in "$@"; do
  case $arg in
    --shard*|shard=*|--tensor-parallel-size*|tensor_parallel_size=*)
      echo "mine_gpus.sh: $arg is set by this script (use TP=... for tensor parallelism)" >&2; exit 2 ;;
  esac
done
every_gpu() { nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null | paste -sd, -; }
gpus=${GPUS:-${CUDA_VISIBLE_DEVICES:-$(every_gpu)}}
IFS=, read -r -a gpu_list <<< "$gpus"
shards=$(( ${#gpu_list[@]} / tp ))
if (( shards < 1 )); then
  echo "mine_gpus.sh: ${#gpu_list[@]} GPU(s) ('$gpus') are fewer than TP=$tp" >&2; exit 2
fi
if (( ${#gpu_list[@]} % tp )); then
  echo "mine_gpus.sh: TP=$tp leaves $(( ${#gpu_list[@]} % tp )) of the GPUs '$gpus' idle" >&2
fi
mkdir -p "$log_dir"
pids=()
for (( i = 0; i < shards; i++ )); do
  devices=$(IFS=,; echo "${gpu_list[*]:i*tp:tp}")
  log="$log_dir/mine-shard-$i-of-$shards.log"
  echo "shard $i/$shards on GPU(s) $devices -> $log"
  CUDA_VISIBLE_DEVICES=$devices "$fair" mine --shard "$i/$shards" --tensor-parallel-size "$tp" "$@" \
    > "$log" 2>&1 &
  pids+=($!)
done
failed=()
for (( i = 0; i < shards; i++ )); do
  wait "${pids[i]}" || failed+=("$i")
done
if (( ${#failed[@]} )); then
  echo "mine_gpus.sh: shard(s) ${failed[*]} of $shards failed (see $log_dir/); rerun to resume them" >&2
  exit 1
fi
exec "$fair" merge "$@"
