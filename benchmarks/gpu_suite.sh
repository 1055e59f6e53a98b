#!/usr/bin/env bash
# Every GPU row of docs/benchmarks.md in ONE device call, compiles included. Not a test.
#
#   bash benchmarks/gpu_suite.sh OUT_DIR
#
# Each result is appended to OUT_DIR/results.jsonl the moment it exists, tagged {"run": NAME, ...},
# most valuable first, so a call cut short still returns what it measured; stderr of every run goes to
# OUT_DIR/log.txt. The whole suite stays inside BUDGET_S seconds (default 530: a 9-minute call with
# room for start-up): a part is skipped (a {"skipped": ...} row) when too little time is left for it.
#   1. ours: bf16, cuDNN flash attention, global batch sweep BATCHES (64,128,256): the best one is
#      the batch of every row after it;
#   2. transformers BertForMaskedLM at that batch: bf16 autocast, SDPA, torch.compile, fused AdamW,
#      masked-only head, then the stock full head;
#   3. ours with XLA attention; ours with the rbg PRNG for dropout;
#   4. embed, both sides on the GPU (float32, then bf16); 5. the checkpoint save (skipped where Orbax is outside the tested range);
#   6. what the compiled GPU step holds (step_anatomy.py: memory, bytes, scatters, float32 logits buffers).
# TF32 is allowed for float32 matmuls on both sides (--matmul_precision tf32); bf16 matmuls are unaffected.
# Runs $PYTHON (default python3); the device image has no TensorFlow (the synthetic source needs none) and
# no ml-collections (carry its wheel: docs/benchmarks.md). CPU smoke run:
#   CONFIG=configs/tiny.py BATCHES=8,16 STEPS=4 INTERVAL=2 bash benchmarks/gpu_suite.sh /tmp/suite
set -u
out=${1:?usage: gpu_suite.sh OUT_DIR}
py=${PYTHON:-python3}
config=${CONFIG:-configs/base.py}
batches=${BATCHES:-64,128,256}
steps=${STEPS:-20}
interval=${INTERVAL:-10}
budget=${BUDGET_S:-530}
mkdir -p "$out"
results="$out/results.jsonl"
log="$out/log.txt"
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
started=$SECONDS

left() { echo $((budget - (SECONDS - started))); }

# measure NAME MIN_SECONDS MAX_SECONDS ARGS...: runs `$py ARGS` for at most min(MAX_SECONDS, time left),
# tagging each JSON line it prints as it comes; a run that prints none leaves a {"failed": ...} row.
measure() {
  local name=$1 need=$2 cap=$3
  shift 3
  local limit
  limit=$(left)
  if ((limit < need)); then
    echo "{\"run\": \"$name\", \"skipped\": \"$limit s left of the budget, needs $need\"}" >>"$results"
    return
  fi
  ((limit > cap)) && limit=$cap
  echo "=== $name ($limit s): $py $*" >>"$log"
  local got=0 line
  while IFS= read -r line; do
    if [[ $line == "{"* ]]; then
      echo "{\"run\": \"$name\", ${line:1}" >>"$results"
      got=1
    fi
  done < <(timeout "$limit" "$py" "$@" 2>>"$log")
  ((got)) || echo "{\"run\": \"$name\", \"failed\": \"no result within $limit s (see log.txt)\"}" >>"$results"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"; } \
  >>"$log"
"$py" -c "import json, sys; sys.path.insert(0, 'benchmarks'); import common; print(json.dumps({'run': 'versions', \
**common.versions('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'torch', 'transformers', 'ml-collections')}))" \
  >>"$results" 2>>"$log"

ours=(benchmarks/throughput.py --config "$config" --steps "$steps" --interval "$interval" --matmul_precision tf32
      --config.model.dtype=bfloat16)
measure ours_bf16_cudnn_sweep 120 300 "${ours[@]}" --batch_sizes "$batches" --config.model.attention_implementation=cudnn

# The batch of the best sweep row by tokens/s (the config's first batch if none ran).
best=$("$py" - "$results" "${batches%%,*}" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
rows = [r for r in rows if r.get("run") == "ours_bf16_cudnn_sweep" and "tokens_per_s" in r]
print(max(rows, key=lambda r: r["tokens_per_s"])["global_batch_size"] if rows else sys.argv[2])
EOF
)
echo "best batch: $best" >>"$log"

torch=(benchmarks/torch_mlm_throughput.py --config "$config" --batch_size "$best" --steps "$steps" --warmup 5
       --dtype bfloat16 --compile --matmul_precision tf32)
measure torch_masked_bf16_compile 60 150 "${torch[@]}" --head masked
measure torch_full_bf16_compile 60 150 "${torch[@]}" --head full
measure ours_bf16_xla_attention 45 120 "${ours[@]}" --batch_sizes "$best" --config.model.attention_implementation=xla
measure ours_bf16_cudnn_rbg 45 120 "${ours[@]}" --batch_sizes "$best" --config.model.attention_implementation=cudnn \
  --config.train.prng_impl=rbg
measure embed 30 90 benchmarks/embed_throughput.py --config "$config" --num_sequences 256 --length 2000 --batch_size 64
measure embed_bf16 30 90 benchmarks/embed_throughput.py --config "$config" --num_sequences 256 --length 2000 \
  --batch_size 64 --dtype bfloat16
measure checkpoint_save 20 60 benchmarks/checkpoint_save.py --config "$config"
measure step_anatomy 30 90 benchmarks/step_anatomy.py --config "$config" --batch "$best"
echo "{\"run\": \"suite\", \"wall_s\": $((SECONDS - started))}" >>"$results"
cat "$results"
