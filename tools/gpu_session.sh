#!/usr/bin/env bash
# One GPU session for the runs that need a card (issues 3, 6, 7, 8, 9), on a 4-GPU machine whose
# commands are limited to 10 minutes: the trainings run in the background (setsid), so the
# session is three or more short commands:
#
#   tools/gpu_session.sh setup REVERSE_MINUTES   # build extensions, GPU tests, launch trainings
#   tools/gpu_session.sh wait SECONDS            # progress while the trainings run
#   tools/gpu_session.sh reverse [WAIT_S]        # score the reversal runs, then one-GPU benchmarks
#   tools/gpu_session.sh finish [WAIT_S]         # language-model and music results into $OUT
#
# GPU map: 0 digit reversal (three 40K-parameter runs, tools/gpu_reverse_session.sh); 1-3 the
# language-model and music runs of tools/gpu_lm_session.sh; 3 also the one-GPU benchmarks once
# its training is done. Needs only PYTHONPATH (no install).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16}
logs=/tmp/heron-session
out=${OUT:-/tmp/out}
mkdir -p "$logs" "$out"
phase=${1:?usage: gpu_session.sh setup MINUTES | wait SECONDS | reverse [WAIT_S] | finish [WAIT_S]}

progress() {
  for f in /tmp/heron-reverse/reverse*.log; do
    [ -f "$f" ] && { echo "-- $(basename "$f"): $(tail -c 300 "$f" | tr '\r' '\n' | grep -v '^$' | tail -n 1)"; }
  done
  tools/gpu_lm_session.sh status 2>&1 | tail -n 12
  nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader
}

case "$phase" in
setup)
  minutes=${2:?reverse minutes}
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
  # 2. the new flip kernel against the CPU kernels before anything trains with it
  CUDA_VISIBLE_DEVICES=0 timeout 240 python3 -m pytest -q -x -p no:cacheprovider -m gpu \
    tests/ops/test_rosa_grad.py 2>&1 | tail -n 5 | tee "$logs/flip-tests.txt"
  # 3. the trainings
  REVERSE_GPU=0 tools/gpu_reverse_session.sh start "$minutes" 2>&1 | tee "$logs/reverse-start.txt"
  GPU_A=1 GPU_B=2 GPU_C=3 TRAIN_MIN=${TRAIN_MIN:-7} tools/gpu_lm_session.sh start 2>&1 | tee "$logs/lm-start.txt"
  # 4. the rest of the GPU tests in the background (read by `wait` and `finish`)
  CUDA_VISIBLE_DEVICES=2 setsid nohup timeout 400 python3 -m pytest -q -p no:cacheprovider -m gpu tests \
    > "$logs/gpu-tests.txt" 2>&1 < /dev/null &
  sleep 15
  progress
  ;;
wait)
  end=$((SECONDS + ${2:?seconds}))
  while [ $SECONDS -lt $end ]; do sleep 60; echo "== $(date +%T)"; progress; done
  echo "gpu tests: $(tail -n 1 "$logs/gpu-tests.txt")"
  ;;
reverse)  # once the reversal runs end: score them, then the one-GPU benchmarks on their card
  tools/gpu_reverse_session.sh collect "${2:-300}" 2>&1 | tee "$logs/reverse-collect.txt"
  export CUDA_VISIBLE_DEVICES=0
  bench=$logs/bench; mkdir -p "$bench"
  echo "== counting-toy step, flip estimator (issue 3)"
  timeout 120 python3 benchmarks/rosa_flip_step.py --device cuda --repeats 10 2>&1 | tee "$bench/flip_step.txt" | tail -n 4
  echo "== generation, incremental vs full recompute (issue 7)"
  timeout 200 python3 benchmarks/generate.py --device cuda --batch 1 64 --json "$bench/generate.json" \
    > "$bench/generate.txt" 2>&1; tail -n 8 "$bench/generate.txt"
  if [ -f benchmarks/train_step.py ]; then
    echo "== training step, one GPU (issue 9)"
    timeout 200 python3 benchmarks/train_step.py --ctx 512 --json "$bench/train_step.json" \
      > "$bench/train_step.txt" 2>&1; tail -n 12 "$bench/train_step.txt"
  fi
  tar -czf "$out/bench.tar.gz" -C "$bench" .
  ls -la "$out"
  ;;
finish)
  tools/gpu_lm_session.sh collect "${2:-500}" 2>&1 | tee "$logs/lm-collect.txt"
  status=${PIPESTATUS[0]}
  tar -czf "$out/heron-logs.tar.gz" -C "$logs" --exclude=bench . 2>/dev/null
  ls -la "$out"
  exit "$status"
  ;;
*)
  echo "unknown phase $phase" >&2; exit 2 ;;
esac
