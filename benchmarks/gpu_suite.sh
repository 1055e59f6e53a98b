#!/usr/bin/env bash
# Every GPU row of docs/benchmarks.md in ONE device call of 600 s: at most BUDGET_S (540) seconds of wall
# time, start-up, installs and compiles included. Not a test.
#
#   bash benchmarks/gpu_suite.sh OUT_DIR          # the device call: run(command=..., carry=[".whl"], timeout_s=600)
#
# Rows go to OUT_DIR/results.jsonl the moment they exist, tagged {"run": NAME, ...}, in order of value, so a
# call cut short still returns what it measured; stderr of every run goes to OUT_DIR/log.txt. A part that
# no longer fits gets a {"skipped": ...} row, one that printed nothing a {"failed": ...} row with its last
# error line. Each run is under `timeout -k 10`, so a run that ignores SIGTERM is killed 10 s later.
#   0. the .whl/ wheels (ml-collections: the device image lacks it) installed into a side folder if needed;
#   1. preflight: versions, the GPU, the wheels, one row per module that does not import;
#   2. ours: bf16, attention auto (cuDNN flash attention on an NVIDIA GPU, XLA if cuDNN does not compile: each
#      row names the one that ran), synthetic batches, global batch 256, then 128, then 64 while time is left
#      (the sweep); each row carries the memory analysis and fusion summary of the step it timed;
#   3. transformers BertForMaskedLM at the best batch of the sweep: bf16 autocast, SDPA, torch.compile, fused
#      AdamW; masked-only head, then the stock full head (each halved until it fits, and says so);
#   4. base_dna: base's model, masking and optimizer on the embedded chr22 megabase (the in-memory source, no
#      TensorFlow) for the seconds left to it, eval rows with ceilings and the copy probe; its batches carry real
#      padding, so it is also the row of the cuDNN lengths path;
#   5. ours with XLA attention, ours with the rbg PRNG for dropout, embed against transformers (float32, then
#      bf16), the checkpoint save.
# One persistent JAX compilation cache (JAX_COMPILATION_CACHE_DIR, default /tmp/dnavec_jax_cache) serves every
# process, and a second call on a warm machine. TF32 is allowed for float32 matmuls on both sides.
# CPU dry run (docs/benchmarks.md): PYTHON=... CONFIG=configs/tiny.py BATCHES=16,8 STEPS=4 INTERVAL=2 EMBED_SEQUENCES=32
# bash benchmarks/gpu_suite.sh OUT; SWEEP_S, TORCH_S, BASE_S cap those rows (200, 150, 200 s).
set -u
out=${1:?usage: gpu_suite.sh OUT_DIR}
py=${PYTHON:-python3}
config=${CONFIG:-configs/base.py}
batches=${BATCHES:-256,128,64}
steps=${STEPS:-20}
interval=${INTERVAL:-10}
budget=${BUDGET_S:-540}
mkdir -p "$out"
out=$(cd "$out" && pwd)
results="$out/results.jsonl"
log="$out/log.txt"
cd "$(dirname "$0")/.."
started=$SECONDS
export PYTHONUNBUFFERED=1
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/dnavec_jax_cache}
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0

left() { echo $((budget - (SECONDS - started))); }
row() { echo "$1" >>"$results"; }

# measure NAME NEED CAP ARGS...: runs `$py ARGS` for at most min(CAP, time left - 10) seconds (timeout -k 10),
# tagging each JSON line it prints as it comes; a run that prints none leaves a {"failed": ...} row.
measure() {
  local name=$1 need=$2 cap=$3
  shift 3
  local limit
  limit=$(($(left) - 10))
  if ((limit < need)); then
    row "{\"run\": \"$name\", \"skipped\": \"$((limit + 10)) s left of the ${budget} s budget, needs $need\"}"
    return
  fi
  ((limit > cap)) && limit=$cap
  local errors="$out/.stderr"
  echo "=== $name ($limit s, at $((SECONDS - started)) s): $py $*" >>"$log"
  local got=0 line began=$SECONDS
  while IFS= read -r line; do
    if [[ $line == "{"* ]]; then
      row "{\"run\": \"$name\", ${line:1}"
      got=1
    fi
  done < <(timeout -k 10 "$limit" "$py" "$@" 2>"$errors")
  wait $! 2>/dev/null
  local status=$?
  cat "$errors" >>"$log"
  # 124: SIGTERM at the limit; 137: SIGKILL 10 s later. Rows it printed stand; what it had not printed is cut.
  ((got && (status == 124 || status == 137))) && row "{\"run\": \"$name\", \"cut\": \"time limit of $limit s\"}"
  if ((!got)); then
    local why
    why=$(grep -E '^[A-Za-z_.]*(Error|Exception|error)[:(]' "$errors" | tail -1 | cut -c1-300 | tr -d '"\\')
    ((status == 124 || status == 137)) && why="cut at the time limit${why:+ ($why)}"
    row "{\"run\": \"$name\", \"failed\": \"no result in $((SECONDS - began)) s of $limit: ${why:-see log.txt}\"}"
  fi
  rm -f "$errors"
}

# 0. Wheels the image lacks (.whl/, carried by the call: docs/benchmarks.md), into a side folder.
if ls .whl/*.whl >/dev/null 2>&1 && ! "$py" -c "import ml_collections" 2>/dev/null; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/dnavec_site \
    .whl/*.whl >>"$log" 2>&1 && export PYTHONPATH=/tmp/dnavec_site${PYTHONPATH:+:$PYTHONPATH}
fi

# 1. Preflight.
measure preflight 20 60 benchmarks/preflight.py

# 2. The sweep, largest batch first; 64 only if the time the previous batch took is still left.
ours=(benchmarks/throughput.py --config "$config" --steps "$steps" --interval "$interval" --matmul_precision tf32
      --config.model.dtype=bfloat16)
sweep_cap=${SWEEP_S:-200}
measure ours_bf16_sweep 100 "$sweep_cap" "${ours[@]}" --batch_sizes "$batches" --deadline_s $((sweep_cap - 15))

# The best sweep row by tokens/s: its batch and tokens/s (the first batch and 0 if none ran).
read -r best best_tps < <("$py" - "$results" "${batches%%,*}" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
rows = [r for r in rows if r.get("run") == "ours_bf16_sweep" and "tokens_per_s" in r]
best = max(rows, key=lambda r: r["tokens_per_s"]) if rows else {"global_batch_size": int(sys.argv[2]), "tokens_per_s": 0}
print(best["global_batch_size"], int(best["tokens_per_s"]))
EOF
)
best=${best:-${batches%%,*}} best_tps=${best_tps:-0}
echo "best batch: $best ($best_tps tokens/s)" >>"$log"

# 3. transformers at that batch, both heads in one process.
measure torch_bf16_compile 60 "${TORCH_S:-150}" benchmarks/torch_mlm_throughput.py --config "$config" \
  --batch_size "$best" --steps "$steps" --warmup 5 --dtype bfloat16 --compile --matmul_precision tf32 \
  --head masked,full

# 4. The base recipe on real DNA, for the time left to it (about 80 s go to start-up, compiles and evals).
base_limit=$(($(left) - 10))
((base_limit > ${BASE_S:-200})) && base_limit=${BASE_S:-200}
base_seconds=$((base_limit - 80))
((base_seconds > 120)) && base_seconds=120
if ((base_seconds >= 20 && best_tps > 0)); then
  measure base_dna 100 "$base_limit" benchmarks/base_dna.py --config "$config" --batch "$best" \
    --seconds "$base_seconds" --tokens_per_s "$best_tps"
else
  # No throughput measured at this batch (no sweep row): a fixed, small number of steps.
  measure base_dna 100 "$base_limit" benchmarks/base_dna.py --config "$config" --batch "$best" --steps "${BASE_STEPS:-100}"
fi

# 5. The rest, while time is left.
measure ours_bf16_xla_attention 45 90 "${ours[@]}" --batch_sizes "$best" --config.model.attention_implementation=xla
measure ours_bf16_rbg 45 90 "${ours[@]}" --batch_sizes "$best" --config.train.prng_impl=rbg
measure embed 30 60 benchmarks/embed_throughput.py --config "$config" --num_sequences "${EMBED_SEQUENCES:-256}" \
  --length 2000 --batch_size 64
measure embed_bf16 30 60 benchmarks/embed_throughput.py --config "$config" --num_sequences "${EMBED_SEQUENCES:-256}" \
  --length 2000 --batch_size 64 --dtype bfloat16
measure checkpoint_save 20 45 benchmarks/checkpoint_save.py --config "$config"
row "{\"run\": \"suite\", \"wall_s\": $((SECONDS - started)), \"budget_s\": $budget}"
cut -c1-700 "$results"
