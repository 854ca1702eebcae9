#!/usr/bin/env bash
# One GPU session for the runs that need a card (issues 6-9), on a 4-GPU machine whose commands
# are limited to 10 minutes: the trainings run in the background (setsid), so the session is a
# few short commands:
#
#   PLAN=... tools/gpu_session.sh setup [REVERSE_MINUTES]  # build extensions, launch runs and benchmarks
#   PLAN=... tools/gpu_session.sh wait SECONDS             # progress while they run
#   PLAN=... tools/gpu_session.sh collect [WAIT_S]         # training results into $OUT
#   PLAN=... tools/gpu_session.sh finish [POLLS]           # multi-GPU benchmarks (stops the one-GPU ones), pack $OUT
#
# PLAN=reverse-music (the 2026-11-27 session; every run alone on its card):
#   0  digit reversal, the recipe (tools/gpu_reverse_session.sh, REVERSE_MINUTES of training)
#   1  its ROSA-free twin, then the one-GPU training-step benchmarks (tools/gpu_train_step.sh)
#   2  music, RWKV-8 + ROSA (tools/gpu_lm_session.sh), then the samples and evaluation of both
#      music models (examples/music/make_examples.py), then the GPU tests
#   3  music, RWKV-7 only, then the generation benchmark (incremental vs full recompute)
# PLAN=copy-scale (issue 7's copy LMs and issue 9's throughput):
#   0/1/2  the pure ROSA LM, the RWKV-8 + ROSA LM and the RWKV-7 LM on the demo corpus
#          (tools/gpu_lm_session.sh; by default 4-bit ROSA, rosa_qk_init=tied and the value
#          estimator, the settings the CPU copy probe chose, docs/benchmarks/copy.md;
#          COPY_BITS / COPY_EXTRA change them),
#          each followed by its copy evaluation
#   3  the one-GPU training-step benchmarks (incl. --compile and ctx 4096), then the GPU tests
# PLAN=copy-repeat (issue 7 again, the fifth session; docs/benchmarks/copy.md):
#   GPU_A/GPU_B/GPU_C (default 1/2/3; card 0 is left alone for other work): the pure ROSA LM,
#          the RWKV-8 + ROSA LM and the RWKV-7 LM as in copy-scale (4-bit, tied keys, value
#          estimator, tau 0.1, ~38M parameters each), all three with the repeat augmentation of
#          the text task (COPY_TASK_OPTIONS, default "repeat_prob=1 repeat_count=3 repeat_random=1
#          repeat_uniform=0.5 copy_trials=25": three random spans in every row, the sixth session's
#          recipe with half of the spans uniform over the whole vocabulary (the copy test holds tokens
#          the training split never does, docs/benchmarks/copy.md), plus the copy metric at every
#          evaluation) and at most COPY_PASSES passes over the corpus (default 0: no
#          cap, each model's steps fill its time; the fifth session used 14),
#          TRAIN_MIN=8.5 as the time limit, 16 validation points each; then each model's copy
#          evaluation (200 trials) on its card. No benchmarks, no tests, no multi-GPU parts;
#          `finish` only lists $OUT. The ROSA check of `setup` runs on GPU_A. BENCH_GPU (unset: none):
#          a fourth card for tools/gpu_rosa_speed.sh (issue 9) while the three train.
# reverse-music and copy-scale: at `finish`, once the cards are free, 2/4-GPU DDP, the loss curves and FSDP2.
# Needs only PYTHONPATH (no install); music21 comes from ./.whl (carry it).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}  # one thread per core spins in tiny CPU ops (see gpu_reverse_session.sh)
[ -d "$PWD/.gpu_shared" ] && export HERON_SHARED=${HERON_SHARED:-$PWD/.gpu_shared}  # ../shared does not travel
logs=/tmp/heron-session
out=${OUT:-/tmp/out}
mkdir -p "$logs" "$out"
phase=${1:?usage: gpu_session.sh setup MINUTES | wait SECONDS | collect [WAIT_S] | finish [POLLS]}
PLAN=${PLAN:-copy-scale}
case $PLAN in
  reverse-music) LM_ENV=(GPU_B=2 GPU_C=3 "LM_CHAIN_A=" "LM_CHAIN_B=music-rosa eval:music" "LM_CHAIN_C=music-rwkv7"
                         TRAIN_MIN=${TRAIN_MIN:-9}) ;;
  copy-scale)    LM_ENV=(GPU_A=0 GPU_B=1 GPU_C=2 "LM_CHAIN_A=copy-rosalm eval:copy-rosalm"
                         "LM_CHAIN_B=copy-rwkv8 eval:copy-rwkv8" "LM_CHAIN_C=copy-rwkv7 eval:copy-rwkv7"
                         TRAIN_MIN=${TRAIN_MIN:-9} COPY_BITS=${COPY_BITS:-4}
                         "COPY_EXTRA=${COPY_EXTRA-rosa_qk_init=tied rosa_estimator=value}") ;;
  copy-repeat)   LM_ENV=(GPU_A=${GPU_A:-1} GPU_B=${GPU_B:-2} GPU_C=${GPU_C:-3}
                         "LM_CHAIN_A=copy-rosalm eval:copy-rosalm" "LM_CHAIN_B=copy-rwkv8 eval:copy-rwkv8"
                         "LM_CHAIN_C=copy-rwkv7 eval:copy-rwkv7"
                         TRAIN_MIN=${TRAIN_MIN:-8.5} COPY_BITS=${COPY_BITS:-4}
                         "COPY_EXTRA=${COPY_EXTRA-rosa_qk_init=tied rosa_estimator=value}"
                         "COPY_TASK_OPTIONS=${COPY_TASK_OPTIONS-repeat_prob=1 repeat_count=3 repeat_random=1 repeat_uniform=0.5 copy_trials=25}"
                         COPY_PASSES=${COPY_PASSES:-0} EVAL_POINTS=${EVAL_POINTS:-16}) ;;
  *) echo "PLAN must be reverse-music, copy-scale or copy-repeat, got $PLAN" >&2; exit 2 ;;
esac
# the card of setup's ROSA check: one the plan's trainings will use
ROSA_CHECK_GPU=0
[ "$PLAN" = copy-repeat ] && ROSA_CHECK_GPU=${GPU_A:-1}

progress() {
  for f in /tmp/heron-reverse/reverse*.log; do
    [ -f "$f" ] && { echo "-- $(basename "$f"): $(tail -c 300 "$f" | tr '\r' '\n' | grep -v '^$' | tail -n 1)"; }
  done
  env "${LM_ENV[@]}" tools/gpu_lm_session.sh status 2>&1 | tail -n 8
  for f in "$logs"/bench-*.log; do [ -f "$f" ] && echo "-- $(basename "$f"): $(tail -n 1 "$f")"; done
  nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader
}

# background chains that wait for a card to come free, then benchmark on it
bench_chain() {  # NAME GPU WAIT_CONDITION_FUNCTION COMMAND...
  local name=$1 gpu=$2 ready=$3; shift 3
  setsid nohup bash -c "
    cd '$REPO'
    for _ in \$(seq 1 600); do $ready && break; sleep 5; done
    echo \"[\$(date -u +%T)] card $gpu free: $name\"
    CUDA_VISIBLE_DEVICES=$gpu $*
    rc=\$?
    echo \"[\$(date -u +%T)] $name done (exit \$rc)\"
    touch '$logs/$name.done'
  " > "$logs/bench-$name.log" 2>&1 < /dev/null &
}

case "$phase" in
setup)
  minutes=${2:-15}
  rm -rf "$logs"/*.done "$logs"/bench-*.log "$logs"/bench
  nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader | tee "$logs/gpu.txt"
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  # 1. every extension, in parallel (each is cached by source hash)
  start=$SECONDS
  for ext in heron.ops.rosa:native_cuda heron.ops.rosa.grad:native_flip_cuda heron.ops.wkv7.cuda:load \
             heron.ops.rosa:native_cpu heron.ops.rosa.grad:native_flip_cpu; do
    python3 -c "import importlib; m, f = '$ext'.split(':'); getattr(importlib.import_module(m), f)()" \
      > "$logs/build-${ext//[:.]/_}.log" 2>&1 &
  done
  wait
  echo "extensions built in $((SECONDS - start)) s"
  grep -l -i "error\|Traceback" "$logs"/build-*.log && tail -n 20 "$logs"/build-*.log
  # 2. the ROSA forward on the GPU against the CPU before anything trains with it
  if [ "${SKIP_ROSA_CHECK:-0}" != 1 ]; then
    CUDA_VISIBLE_DEVICES=$ROSA_CHECK_GPU timeout 150 python3 -m pytest -q -x -p no:cacheprovider -m gpu \
      tests/ops/test_rosa_cuda.py 2>&1 | tail -n 3 | tee "$logs/rosa-cuda-tests.txt"
  fi
  # 3. the trainings
  [ "$PLAN" = reverse-music ] && REVERSE_GPU=0 TWIN_GPU=1 tools/gpu_reverse_session.sh start "$minutes" 2>&1 \
    | tee "$logs/reverse-start.txt"
  env "${LM_ENV[@]}" tools/gpu_lm_session.sh start 2>&1 | tee "$logs/lm-start.txt"
  # 4. benchmarks and tests on the cards the trainings leave (copy-repeat: BENCH_GPU, when set, runs
  #    tools/gpu_rosa_speed.sh on that card; its files are packed into $OUT/rosa-speed.tar.gz by collect)
  if [ "$PLAN" = copy-repeat ]; then
    if [ -n "${BENCH_GPU:-}" ]; then
      mkdir -p "$logs/rosa_speed"
      bench_chain rosa-speed "$BENCH_GPU" true "OUT=$logs/rosa_speed tools/gpu_rosa_speed.sh"
    fi
    sleep 10; progress; exit 0
  fi
  mkdir -p "$logs/bench" "$logs/train_step"
  gpu_tests="timeout 420 python3 -m pytest -q -p no:cacheprovider -m gpu tests > $logs/bench/gpu-tests.txt 2>&1"
  if [ "$PLAN" = reverse-music ]; then
    bench_chain train-step-one 1 "! pgrep -f '[r]everse-no-rosa' > /dev/null" \
      "OUT=$logs/train_step PARTS=one,compile,loss1,ctx4096 tools/gpu_train_step.sh"
    bench_chain generate 3 "[ -f /tmp/heron-lm-session/status/music-rwkv7.rc ]" \
      "timeout 240 python3 benchmarks/generate.py --device cuda --batch 1 --json $logs/bench/generate_b1.json" \
      "> $logs/bench/generate_b1.txt 2>&1; timeout 300 python3 benchmarks/generate.py --device cuda --batch 64" \
      "--full-samples 2 --json $logs/bench/generate_b64.json > $logs/bench/generate_b64.txt 2>&1"
    bench_chain gpu-tests 2 "[ -f /tmp/heron-lm-session/status/chain-B.done ]" "$gpu_tests"
  else
    bench_chain train-step-one 3 true \
      "OUT=$logs/train_step PARTS=one,loss1,compile,ctx4096 tools/gpu_train_step.sh; $gpu_tests"
  fi
  sleep 10
  progress
  ;;
wait)
  end=$((SECONDS + ${2:?seconds}))
  while [ $SECONDS -lt $end ]; do sleep 60; echo "== $(date +%T)"; progress; done
  ;;
collect)  # the trainings' results into $OUT (call again if it exits 3)
  if [ "$PLAN" = reverse-music ]; then
    tools/gpu_reverse_session.sh collect "${2:-420}" 2>&1 | tee "$logs/reverse-collect.txt"
    [ "${PIPESTATUS[0]}" = 3 ] && exit 3
    env "${LM_ENV[@]}" FORCE=1 tools/gpu_lm_session.sh collect 60 2>&1 | tail -n 40 | tee "$logs/lm-collect.txt"
  else
    env "${LM_ENV[@]}" tools/gpu_lm_session.sh collect "${2:-420}" 2>&1 | tail -n 40 | tee "$logs/lm-collect.txt"
    [ "${PIPESTATUS[0]}" = 3 ] && exit 3
  fi
  if [ -d "$logs/rosa_speed" ]; then
    cp "$logs/bench-rosa-speed.log" "$logs/rosa_speed/" 2>/dev/null
    tar -czf "$out/rosa-speed.tar.gz" -C "$logs" rosa_speed
    grep -E "tokens/s|best:|fastest" "$logs/rosa_speed/rosa_speed.log" 2>/dev/null | tail -n 20
  fi
  ls -la "$out"
  ;;
finish)  # stop the one-GPU benchmarks, then the multi-GPU parts on every card; pack $OUT
  if [ "$PLAN" = copy-repeat ]; then  # nothing else ran; never touch card 0
    echo "PLAN=copy-repeat: no benchmarks to finish; results (from collect):"; ls -la "$out"; exit 0
  fi
  for _ in $(seq 1 "${2:-12}"); do [ -f "$logs/train-step-one.done" ] && break; sleep 5; done
  # the multi-GPU parts need every card: stop what still runs
  pkill -f "[g]pu_train_step.sh"; pkill -f "[b]enchmarks/train_step.py"
  pkill -f "[b]enchmarks/generate.py" ; pkill -f "[p]ytest -q -p no:cacheprovider -m gpu"
  sleep 3
  OUT=$logs/train_step PARTS=multi,lossN,fsdp tools/gpu_train_step.sh 2>&1 | tail -n 30
  cp "$logs"/bench-*.log "$logs"/*.txt "$logs/bench/" 2>/dev/null
  tar -czf "$out/bench.tar.gz" -C "$logs" bench train_step
  echo "gpu tests: $(tail -n 1 "$logs/bench/gpu-tests.txt" 2>/dev/null)"
  tail -n 6 "$logs/bench/generate_b1.txt" 2>/dev/null
  ls -la "$out"
  ;;
*)
  echo "unknown phase $phase" >&2; exit 2 ;;
esac
