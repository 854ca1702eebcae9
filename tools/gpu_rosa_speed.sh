#!/usr/bin/env bash
# Issue 9 on ONE card (CUDA_VISIBLE_DEVICES picks it), ~9 minutes on an H100:
#   1. benchmarks/rosa_layer_streams.py: the ROSA engine on the layer streams of the 1-bit and
#      4-bit RWKV-8 + ROSA-QKV configurations, per grouping work budget (which budget is fastest
#      on a model's own, self-repeating streams);
#   2. benchmarks/train_step.py --compile at ctx 512 x batch 32: rwkv7 (the same-run baseline),
#      rwkv8, rwkv8-rosa-value (4-bit), rwkv8-rosa1-value (1-bit) and both with shared keys
#      (rwkv8-rosa-shared, rwkv8-rosa1-shared: token ROSA), then the shared rows again
#      with a fresh random batch every step (the benchmark's default cycles 4, which the model
#      starts to memorise) and with the 1-bit configuration's fastest budget from step 1 when it
#      is not the default;
#   3. the GPU tests of the compiled ROSA blocks and the ROSA estimators.
# Writes into $OUT (default /tmp/out): rosa_speed.log, layer_streams.json, compiled.json,
# compiled_fresh.json, compiled_budget.json, gpu_tests.txt. Assumes the extensions are built (tools/gpu_session.sh setup).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
out=${OUT:-/tmp/out}; mkdir -p "$out"
log="$out/rosa_speed.log"; touch "$log"
. tools/session_parts.sh
part 150 "ROSA engine on layer streams" python3 benchmarks/rosa_layer_streams.py \
  --configs rwkv8-rosa1-value,rwkv8-rosa-value,rwkv8-rosa1-shared --budgets 0 8 32 128 512 \
  --json "$out/layer_streams.json"
best=$(python3 - "$out/layer_streams.json" <<'PY' 2>/dev/null
import json, sys
rows = [r for r in json.load(open(sys.argv[1]))["rows"] if r["config"] == "rwkv8-rosa1-value" and r["same_outputs"]]
print(min(rows, key=lambda r: r["ms_per_pass"])["budget"] if rows else "")
PY
)
echo "fastest grouping budget for the 1-bit layer streams: ${best:-unknown}" | tee -a "$log"
part 400 "compiled train step ctx 512 x 32" python3 benchmarks/train_step.py \
  --configs rwkv7,rwkv8,rwkv8-rosa-value,rwkv8-rosa1-value,rwkv8-rosa-shared,rwkv8-rosa1-shared --ctx 512 \
  --batch 32 --compile --steps 10 --warmup 2 \
  --no-breakdown --time-budget 55 --json "$out/compiled.json"
part 150 "compiled ROSA rows, a fresh batch every step" python3 benchmarks/train_step.py \
  --configs rwkv8-rosa-shared,rwkv8-rosa1-shared --ctx 512 --batch 32 --compile --steps 10 --warmup 2 \
  --no-breakdown --time-budget 55 --fresh-batches --json "$out/compiled_fresh.json"
default=$(python3 -c "import heron.ops.rosa as r, sys; print(sys.modules['heron.ops.rosa'].CUDA_GROUPING_WORK_PER_ELEMENT)")
if [ -n "$best" ] && [ "$best" != "$default" ]; then
  part 150 "compiled ROSA rows with grouping budget $best" python3 benchmarks/train_step.py \
    --configs rwkv8-rosa-value,rwkv8-rosa1-value --ctx 512 --batch 32 --compile --steps 10 --warmup 2 \
    --no-breakdown --time-budget 55 --rosa-grouping-work "$best" --json "$out/compiled_budget.json"
fi
part 200 "GPU tests" bash -c "python3 -m pytest -q -p no:cacheprovider -m gpu tests/train/test_compile.py \
  tests/ops/test_rosa_grad.py 2>&1 | tail -n 25 > '$out/gpu_tests.txt'"
grep -E "tokens/s|best:|budget|per pass|passed|failed|FAILED|exit" "$log" | tail -40
