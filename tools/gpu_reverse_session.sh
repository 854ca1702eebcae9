#!/usr/bin/env bash
# The digit-reversal experiment of issue 6 on a GPU machine whose commands are limited to
# 10 minutes: `start` sizes the runs from a short probe and launches them in the background
# (they outlive the command), `collect` waits for them and scores the models on a fresh draw.
#
#   tools/gpu_reverse_session.sh start MINUTES     # training budget of the main run, e.g. 17
#   tools/gpu_reverse_session.sh collect [WAIT_S]  # wait (at most WAIT_S), evaluate, pack to $OUT
#
# Two runs, on REVERSE_GPU (default 0) and TWIN_GPU (default: the same card):
#   reverse          the recipe, examples/reverse/config.toml (batch 256)
#   reverse-no-rosa  the same recipe and step count without the ROSA blocks (ROSA's effect)
# The recipe alone takes 0.063 s per step on an H100; sharing the card roughly halves each run's
# speed (measured 2026-11-27), so with one card the step count comes from the probe with that
# factor, and with two cards the recipe gets its card alone (10% kept for evaluations). A run
# that stops at its time limit continues with
#   heron train reverse --resume --out $REVERSE_RUNS/reverse --time-limit MINUTES
# Needs only PYTHONPATH (no install). Results: $OUT/reverse.tar.gz (CSVs, curves, logs, models).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# a few CPU threads per run: with one OpenMP thread per core, two runs on a 64-core host spent
# their time spinning in the thread pools of tiny CPU ops (0.17 s per step instead of 0.06)
export OMP_NUM_THREADS=${JOB_THREADS:-4}
export CUDA_VISIBLE_DEVICES=${REVERSE_GPU:-0}
twin_gpu=${TWIN_GPU:-$CUDA_VISIBLE_DEVICES}
runs=${REVERSE_RUNS:-/tmp/heron-reverse}
out=${OUT:-/tmp/out}
phase=${1:?usage: gpu_reverse_session.sh start MINUTES | collect [WAIT_S]}
common=(--config examples/reverse/config.toml --no-progress --no-tensorboard)

if [ "$phase" = start ]; then
  minutes=${2:?minutes}
  rm -rf "$runs"; mkdir -p "$runs"
  # 1. probe alone (the extensions are built beforehand)
  python3 -m heron train reverse "${common[@]}" --steps "${REVERSE_PROBE_STEPS:-60}" --log-every 10 \
    --eval-every 0 --ckpt-every 0 --time-limit 0 --out "$runs/probe" > "$runs/probe.log" 2>&1 \
    || { tail -30 "$runs/probe.log"; exit 1; }
  # Sharing a card: budget 2x the time measured alone, and keep 5% for evals.
  safety=$([ "$twin_gpu" = "$CUDA_VISIBLE_DEVICES" ] && echo 0.475 || echo 0.9)
  read -r steps step_s < <(python3 tools/lm_session_tools.py steps "$runs/probe" \
    "$(python3 -c "print($minutes * 60)")" --safety "$safety" --min 500 --round 100) || exit 1
  echo "probe: $step_s s/step alone -> $steps steps" | tee "$runs/plan.txt"
  plan() {  # --steps N with evaluations, checkpoints and the curriculum scaled to N
    local n=$1
    echo --steps "$n" --eval-every $((n / 10)) --ckpt-every $((n / 5)) --log-every 50 \
      --time-limit "$minutes" --task-option "curriculum=[[0,20],[$((n / 10)),40],[$((n / 5)),60]]"
  }
  launch() {  # name, gpu, args...: a background run in its own session, so it outlives this command
    local name=$1 gpu=$2; shift 2
    CUDA_VISIBLE_DEVICES=$gpu setsid nohup python3 -m heron train reverse "${common[@]}" "$@" --out "$runs/$name" \
      > "$runs/$name.log" 2>&1 < /dev/null &
    echo "launched $name (pid $!)"
  }
  launch reverse "$CUDA_VISIBLE_DEVICES" $(plan "$steps")
  launch reverse-no-rosa "$twin_gpu" --model-config rosa=null $(plan "$steps")
  sleep 20
  tail -n 3 "$runs"/reverse*.log
  exit 0
fi

if [ "$phase" = collect ]; then
  wait_s=${2:-0}
  deadline=$((SECONDS + wait_s))
  while pgrep -f "heron train reverse" > /dev/null && [ $SECONDS -lt $deadline ]; do sleep 10; done
  if pgrep -f "heron train reverse" > /dev/null; then
    echo "runs still going after ${wait_s}s:"; tail -n 2 "$runs"/reverse*.log; exit 3
  fi
  for name in reverse reverse-no-rosa; do
    dir=$runs/$name
    tail -n 2 "$runs/$name.log"
    [ -f "$dir/model.safetensors" ] || { echo "$name: no model file"; continue; }
    python3 -m heron.train.plot "$dir" --png "$dir/curve.png" --title "reverse 1-60, $name" > /dev/null 2>&1
    echo "== $name: fresh draw (seed 1234, 20 per digit count)"
    python3 -m heron eval reverse --checkpoint "$dir/model.safetensors" --digits 60 --samples 20 \
      --seed 1234 --device "${EVAL_DEVICE:-cuda}" --no-progress 2>&1 | tail -n 2 | tee "$dir/fresh.txt"
  done
  mkdir -p "$out"
  tar -czf "$out/reverse.tar.gz" -C "$runs" --exclude='checkpoint.pt' --exclude='*.pt.tmp' --exclude='tensorboard' .
  ls -la "$out/reverse.tar.gz"
  exit 0
fi
echo "unknown phase $phase" >&2
exit 2
