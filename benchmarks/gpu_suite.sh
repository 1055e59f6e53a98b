#!/usr/bin/env bash
# Every GPU row of docs/benchmarks.md, in as few device calls as possible. Not a test.
#
#   bash benchmarks/gpu_suite.sh ours  OUT_DIR    # our trainer: bf16, bf16 + cuDNN flash attention, fp32; embed
#   bash benchmarks/gpu_suite.sh torch OUT_DIR    # transformers BertForMaskedLM: stock and masked head, compiled
#
# Each part fits one 10-minute device call. Results are appended as JSON lines to OUT_DIR/results.jsonl
# (one line per measurement, tagged with "run"), stderr of every run to OUT_DIR/log.txt, so only two files
# come back. CONFIG and BATCH override the model config and global batch (a CPU smoke run:
# CONFIG=configs/tiny.py BATCH=8 STEPS=4 bash benchmarks/gpu_suite.sh ours /tmp/suite).
# The device image has no TensorFlow: the trainer runs on its synthetic source, which needs none.
set -u
part=${1:?usage: gpu_suite.sh ours|torch OUT_DIR}
out=${2:?usage: gpu_suite.sh ours|torch OUT_DIR}
config=${CONFIG:-configs/base.py}
batch=${BATCH:-64}
steps=${STEPS:-30}
mkdir -p "$out"
results="$out/results.jsonl"
export PYTHONUNBUFFERED=1

measure() {  # measure NAME SCRIPT ARGS...: appends {"run": NAME, ...the script's JSON line...}
  local name=$1
  shift
  echo "=== $name: $*" >>"$out/log.txt"
  local line
  line=$(timeout 280 python "$@" 2>>"$out/log.txt" | tail -n 1)
  if [[ $line == "{"* ]]; then
    echo "{\"run\": \"$name\", ${line:1}" >>"$results"
  else
    echo "{\"run\": \"$name\", \"failed\": true}" >>"$results"
  fi
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"; } \
  >>"$out/log.txt"

case $part in
  ours)
    interval=$((steps / 3 > 0 ? steps / 3 : 1))
    common=(benchmarks/throughput.py --config "$config" --steps "$steps" --interval "$interval"
            "--config.train.global_batch_size=$batch")
    measure ours_bf16 "${common[@]}" --config.model.dtype=bfloat16
    measure ours_bf16_cudnn_attention "${common[@]}" --config.model.dtype=bfloat16 \
      --config.model.attention_implementation=cudnn
    measure ours_fp32 "${common[@]}" --config.model.dtype=float32
    measure embed benchmarks/embed_throughput.py --config "$config" --num_sequences 256 --length 2000 --batch_size 64
    ;;
  torch)
    common=(benchmarks/torch_mlm_throughput.py --config "$config" --batch_size "$batch" --steps "$steps")
    measure torch_full_bf16_compile "${common[@]}" --dtype bfloat16 --compile --head full
    measure torch_masked_bf16_compile "${common[@]}" --dtype bfloat16 --compile --head masked
    measure torch_masked_fp32 "${common[@]}" --dtype float32 --head masked
    ;;
  *)
    echo "unknown part $part (ours or torch)" >&2
    exit 2
    ;;
esac
cat "$results"
