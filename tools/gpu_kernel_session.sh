#!/usr/bin/env bash
# One-GPU session for kernel work (issues 4, 7 and 9), split into phases that each fit a 10-minute
# device command; everything lands flat in $OUT (at most 8 files come back):
#
#   tools/gpu_kernel_session.sh kernels   # build, WKV7/ROSA GPU tests, benchmarks/wkv7.py, train steps
#   tools/gpu_kernel_session.sh rest      # ctx 4096 train steps, generation b1/b64, all GPU tests
#   tools/gpu_kernel_session.sh wkv7      # WKV7 only: benchmarks/wkv7.py (Heron and the sequential
#                                         # backward), its GPU tests (~300 s on an H200: Triton builds),
#                                         # then the split backward's passes alone (--split-sweep); ~8 min
#   tools/gpu_kernel_session.sh wkv7-fla [B T H N ...]
#                                         # fla beside Heron (carry .whl) at the given shapes (default:
#                                         # the three anchor shapes). fla autotunes every new shape: the
#                                         # first on a cold machine took ~4 minutes (fifteenth session,
#                                         # one H200), so give the anchor shapes two commands, e.g.
#                                         # `wkv7-fla 8 4096 32 64 32 1024 12 64`, then, while the machine
#                                         # is warm (its Triton cache kept), `wkv7-fla 4 16384 32 64`
#
# Every part is bounded by `timeout` and may fail without stopping the others; the log of each
# phase is $OUT/<phase>.log.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4 MAX_JOBS=${MAX_JOBS:-16}
[ -d "$PWD/.gpu_shared" ] && export HERON_SHARED=${HERON_SHARED:-$PWD/.gpu_shared}  # ../shared does not travel
out=${OUT:-/tmp/out}; mkdir -p "$out"
phase=${1:?usage: gpu_kernel_session.sh kernels | rest | wkv7 | wkv7-fla [B T H N ...]}
log="$out/$phase.log"; touch "$log"
. tools/session_parts.sh  # part SECONDS TITLE COMMAND...
bench=benchmarks/train_step.py

case $phase in
kernels)
  nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader | tee -a "$log"
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$log"
  start=$SECONDS
  for ext in heron.ops.wkv7.cuda:load heron.ops.rosa:native_cuda heron.ops.rosa:native_cpu; do
    python3 -c "import importlib; m, f = '$ext'.split(':'); getattr(importlib.import_module(m), f)()" \
      >> "$log" 2>&1 &
  done
  wait
  echo "extensions built in $((SECONDS - start)) s" | tee -a "$log"
  part ${TESTS_S:-75} "WKV7 and ROSA GPU tests" python3 -m pytest -q -p no:cacheprovider -m gpu \
    tests/ops/test_wkv7_cuda.py tests/ops/test_rosa_cuda.py tests/ops/test_rosa_grad.py -k "${TESTS_K:-not rows1}"
  grep -E "passed|failed" "$log" | tail -n 2
  part ${WKV7_S:-60} "benchmarks/wkv7.py" python3 benchmarks/wkv7.py --quick --json "$out/wkv7.json"
  grep -E "^\(" "$log" | tail -n 4
  part ${COMPILE_S:-120} "train step rwkv7 batch 32 compiled" python3 $bench --configs rwkv7 --ctx 512 --batch 32 \
    --steps 8 --warmup 3 --no-breakdown --compile --json "$out/rwkv7_b32_compiled.json"
  part ${B16_S:-60} "train step batch 16: rwkv7, rwkv8-rosa-value" python3 $bench --configs rwkv7,rwkv8-rosa-value \
    --ctx 512 --batch 16 --steps 6 --warmup 2 --no-breakdown --json "$out/one_gpu_b16.json"
  grep -E "tokens/s|ratio" "$log" | tail -n 6
  ;;
rest)
  site=$(tools/ensure_wheels.sh /tmp/heron-site) && export PYTHONPATH="$PYTHONPATH:$site"  # music21 (carry .whl)
  part 240 "train step ctx 4096" python3 $bench --configs rwkv7,rwkv8,rwkv8-rosa-value --ctx 4096 --batch 2 \
    --steps 4 --warmup 2 --chunked-ce --no-breakdown --json "$out/one_gpu_4096.json"
  grep -E "tokens/s" "$log" | tail -n 3
  part 100 "generation batch 1" python3 benchmarks/generate.py --device cuda --batch 1 --json "$out/generate_b1.json"
  part 200 "generation batch 64" python3 benchmarks/generate.py --device cuda --batch 64 --json "$out/generate_b64.json"
  grep -iE "incremental|full|ratio" "$log" | tail -n 6
  part 200 "all GPU tests" python3 -m pytest -q -p no:cacheprovider -m gpu tests
  tail -n 3 "$log"
  ;;
wkv7)
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$log"
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$log"
  python3 -c "from heron.ops.wkv7 import cuda; cuda.load()" >> "$log" 2>&1
  # Heron's figures first (fla is the wkv7-fla phase: the fourteenth session's run of both in one
  # command spent its benchmark time in fla's autotuning, and cut the tests off at 109 of 115)
  part ${WKV7_S:-150} "benchmarks/wkv7.py" python3 benchmarks/wkv7.py --variants "sequential backward" \
    --fla-settings --json "$out/wkv7.json"
  grep -E "^\(" "$log" | cut -c1-400
  part ${TESTS_S:-300} "WKV7 GPU tests" python3 -m pytest -q -p no:cacheprovider -m gpu -rf tests/ops/test_wkv7_cuda.py
  grep -E "passed|failed" "$log" | tail -n 2
  part ${SWEEP_S:-60} "benchmarks/wkv7.py --split-sweep" python3 benchmarks/wkv7.py --split-sweep --chunks 32 \
    --json "$out/split_sweep.json"
  grep -E "^\(.*chunk" "$log" | sed 's/fwd .* + pass 2/pass 2/' | cut -c1-200
  ;;
wkv7-fla)
  # fla (carry .whl from tools/fetch_wheels.sh), ANCHORS.md's best setting only (64-step chunks,
  # safe gate; its default is 1.4-2.2x slower), at the anchor shapes, Heron timed beside it
  site=$(tools/ensure_wheels.sh /tmp/heron-site) && export PYTHONPATH="$PYTHONPATH:$site"
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$log"
  python3 -c "from heron.ops.wkv7 import cuda; cuda.load()" >> "$log" 2>&1
  shift
  dims=("$@"); [ ${#dims[@]} -eq 0 ] && dims=(8 4096 32 64 32 1024 12 64 4 16384 32 64)
  (( ${#dims[@]} % 4 == 0 )) || { echo "wkv7-fla: shapes are groups of four numbers B T H N" >&2; exit 2; }
  shapes=(); for ((i = 0; i < ${#dims[@]}; i += 4)); do shapes+=(--shape "${dims[@]:i:4}"); done
  part ${FLA_S:-540} "benchmarks/wkv7.py with fla" python3 benchmarks/wkv7.py "${shapes[@]}" --variants \
    --fla-settings "chunk 64, safe gate" --json "$out/wkv7_fla.json"
  grep -E "^\(" "$log" | cut -c1-500
  ;;
*)
  echo "unknown phase $phase" >&2; exit 2 ;;
esac
