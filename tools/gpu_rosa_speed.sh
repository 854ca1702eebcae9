#!/usr/bin/env bash
# Issue 9 on ONE card (CUDA_VISIBLE_DEVICES picks it), ~16 minutes on an H100 with every part (each
# part is time-boxed, so a shorter window cuts the last parts; PARTS below picks some):
#   1. the CUDA ROSA tests (tests/ops/test_rosa_cuda.py: the grouping kernel's runs branch against
#      the CPU engine) before anything is timed, and tools/compile_grad_check.py (blocks compiled
#      with their ROSA layers against eager, as in the ninth session; also with aot_eager, and ROSA eager);
#   2. benchmarks/train_step.py --compile at ctx 512 x batch 32, 20 timed steps each (per-step
#      times from CUDA events): rwkv7 (the same-run baseline), RWKV-8 + ROSA-QKV with shared keys
#      (rwkv8-rosa-shared 4-bit, rwkv8-rosa1-shared 1-bit: token ROSA, where the runs branch
#      applies) and with tied keys (rwkv8-rosa-value, rwkv8-rosa1-value). --compile compiles the
#      ROSA ops with their blocks (the default since the ninth session confirmed on a GPU the fix
#      of their compiled gradients: docs/limits.md);
#   3. the shared rows again with --eager-rosa (the ROSA ops eagerly between the compiled graphs,
#      the CUDA default of the eighth session) and with a fresh random batch every step;
#   4. the GPU tests of the compiled ROSA blocks and the ROSA estimators;
#   5. benchmarks/rosa_layer_streams.py after 8 training steps on 4 cycled batches (the nearly
#      constant deep-layer streams): the engine per grouping budget, 0 = the automaton alone.
# Writes into $OUT (default /tmp/out): rosa_speed.log, rosa_cuda_tests.txt, compiled.json,
# compiled_overlap.json, eager_rosa.json, compiled_fresh.json, gpu_tests.txt, layer_streams.json. Assumes the extensions are built
# (tools/gpu_session.sh setup).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
out=${OUT:-/tmp/out}; mkdir -p "$out"
log="$out/rosa_speed.log"; touch "$log"
. tools/session_parts.sh
# PARTS (default: all but bisect, in this order) picks some: tests gradcheck bisect compiled overlap
# eager_rosa fresh gputests streams. overlap: the shared-key rows with --rosa-overlap (each ROSA
# block on a second stream beside its time-mix), to compare with the compiled part's. bisect: the aot_eager check (wrong on CUDA before the eighth session's fix) with the CUDA
# WKV7 kernels and the CUDA ROSA extensions replaced by their CPU-side paths (still wrong in the eighth
# session), without DeepEmbed, and one ROSA-QKV block alone per estimator, key init and width.
PARTS=" ${PARTS:-tests gradcheck compiled overlap eager_rosa fresh gputests streams} "
PARTS=${PARTS// compiled_rosa / eager_rosa }  # the eighth session's name of that part
want() { [[ "$PARTS" == *" $1 "* ]]; }
want tests && { part 150 "CUDA ROSA tests" bash -c "python3 -m pytest -q -p no:cacheprovider -m gpu tests/ops/test_rosa_cuda.py \
  2>&1 | tail -n 25 > '$out/rosa_cuda_tests.txt'"; tail -n 1 "$out/rosa_cuda_tests.txt" | tee -a "$log"; }
if want gradcheck; then
  # the CPU compile tests under this host's torch: under torch 2.11 they caught the lost ROSA gradient
  part 150 "CPU compile tests of the ROSA layers, this host's torch" bash -c "python3 -m pytest -q -p no:cacheprovider \
    tests/layers/test_rosa_compile.py 2>&1 | tail -n 3"
  part 200 "compiled ROSA gradients against eager (the full compile)" python3 tools/compile_grad_check.py \
    --device cuda --dtype float32 --rosa qkv1 none
  # where they would differ: the same graphs without Inductor's code generation, and the ROSA ops eager
  part 150 "the same with aot_eager" python3 tools/compile_grad_check.py --device cuda --dtype float32 \
    --rosa qkv1 --backend aot_eager
  part 150 "the ROSA ops outside the graphs (--eager-rosa)" python3 tools/compile_grad_check.py \
    --device cuda --dtype float32 --rosa qkv1 --rosa-eager
fi
if want bisect; then
  part 120 "one ROSA-QKV block alone, aot_eager" python3 tools/compile_grad_check.py --device cuda --layer \
    --backend aot_eager
  for swap in "--no-deep-embed" "--wkv-backend chunked --rosa-engine cpu"; do
    part 120 "aot_eager, $swap" python3 tools/compile_grad_check.py --device cuda --dtype float32 --rosa qkv1 \
      --backend aot_eager $swap
  done
fi
want compiled && part 420 "compiled train step ctx 512 x 32" python3 benchmarks/train_step.py \
  --configs ${COMPILED_CONFIGS:-rwkv7,rwkv8-rosa-shared,rwkv8-rosa1-shared,rwkv8-rosa-value,rwkv8-rosa1-value} --ctx 512 \
  --batch 32 --compile --steps 20 --warmup 3 --no-breakdown --time-budget 75 --json "$out/compiled.json"
want overlap && part 200 "the shared-key rows with each ROSA block on the side stream (--rosa-overlap)" \
  python3 benchmarks/train_step.py --configs rwkv8-rosa-shared,rwkv8-rosa1-shared --ctx 512 --batch 32 --compile \
  --rosa-overlap --steps 20 --warmup 3 --no-breakdown --time-budget 75 --json "$out/compiled_overlap.json"
want eager_rosa && part 200 "shared-key rows with the ROSA ops eager between the graphs" python3 benchmarks/train_step.py \
  --configs rwkv8-rosa-shared,rwkv8-rosa1-shared --ctx 512 --batch 32 --compile --eager-rosa --steps 20 \
  --warmup 3 --no-breakdown --time-budget 75 --json "$out/eager_rosa.json"
want fresh && part 200 "compiled shared-key rows, a fresh batch every step" python3 benchmarks/train_step.py \
  --configs rwkv8-rosa-shared,rwkv8-rosa1-shared --ctx 512 --batch 32 --compile --steps 20 --warmup 3 \
  --no-breakdown --time-budget 75 --fresh-batches --json "$out/compiled_fresh.json"
want gputests && part 150 "GPU tests" bash -c "python3 -m pytest -q -p no:cacheprovider -m gpu tests/train/test_compile.py \
  tests/ops/test_rosa_grad.py tests/models/test_rosa_overlap.py 2>&1 | tail -n 25 > '$out/gpu_tests.txt'"
want streams && part 150 "ROSA engine on trained layer streams" python3 benchmarks/rosa_layer_streams.py \
  --configs rwkv8-rosa1-shared,rwkv8-rosa1-value --train-steps 8 --cycle 4 --budgets 0 32 \
  --json "$out/layer_streams.json"
grep -E "tokens/s|per step|best:|budget|per pass|passed|failed|FAILED|exit" "$log" | tail -60
