#!/usr/bin/env bash
# Arithmetic (± 1..20 digits, spec RWKV8.md §7) from scratch on a GPU machine whose commands are
# limited to 10 minutes: variants of examples/arith/config.toml side by side, one per GPU (several
# per GPU when there are fewer GPUs than variants: the 0.57M-parameter models are launch-bound).
#
#   tools/gpu_arith_session.sh start MINUTES TOTAL_MINUTES   # probe, size one cosine schedule for
#                                                            # TOTAL_MINUTES, train MINUTES of it
#   tools/gpu_arith_session.sh resume MINUTES DIR            # continue every run for MINUTES more
#                                                            # from DIR (an earlier phase's $OUT, carried)
#
# Each phase leaves in $OUT one NAME.tar per run (its checkpoint, CSVs, models and log, ~11 MB:
# carry them to the next call), plan.txt, and summary.txt (the last evaluations; after `resume`,
# each exported model scored on the official draw and on a fresh one). Needs only PYTHONPATH.
#
# Variants (name: what differs from the config file):
#   arith          the recipe
#   arith-lr1e-3   peak lr 1e-3, the official small-task value
#   arith-flat     no curriculum: all 20 digit counts from the first step
#   arith-no-rosa  the ROSA blocks removed (`rosa=null`): what ROSA adds
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# a few CPU threads per run: with one OpenMP thread per core, runs sharing a host spin in the
# thread pools of tiny CPU ops (gpu_reverse_session.sh measured 0.17 s per step instead of 0.06)
export OMP_NUM_THREADS=${JOB_THREADS:-4}
runs=${ARITH_RUNS:-/tmp/heron-arith}
out=${OUT:-/tmp/out}
phase=${1:?usage: gpu_arith_session.sh start MINUTES TOTAL_MINUTES | resume MINUTES DIR}
minutes=${2:?minutes}
common=(--no-progress --no-tensorboard)
names=(arith arith-lr1e-3 arith-flat arith-no-rosa)
read -r gpus device < <(python3 -c "import torch; n = torch.cuda.device_count(); print(max(n, 1), 'cuda' if n else 'cpu')")
mkdir -p "$out"

variant_args() {  # name, steps: the options of one variant for a schedule of `steps`
  local name=$1 n=$2 curriculum="[[0,5],[$(($2 / 10)),10],[$(($2 / 5)),20]]"
  case $name in
    arith-lr1e-3) echo --lr 1e-3 ;;
    arith-flat) curriculum="[]" ;;
    arith-no-rosa) echo --model-config rosa=null ;;
  esac
  echo --steps "$n" --eval-every $((n / 10)) --ckpt-every $((n / 10)) --task-option "curriculum=$curriculum"
}

run_all() {  # run_all FUNCTION: FUNCTION NAME GPU for every variant, GPU = index mod gpus, in parallel
  local index=0 pids=()
  for name in "${names[@]}"; do
    local gpu=$((index % gpus)); index=$((index + 1))
    "$1" "$name" "$gpu" > "$runs/$name.log" 2>&1 < /dev/null &
    pids+=($!)
    echo "$name on GPU $gpu (pid $!)"
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
}

summarise() {
  for name in "${names[@]}"; do
    echo "== $name"
    tail -n 2 "$runs/$name.log"
    [ -f "$runs/$name/eval.csv" ] && tail -n 3 "$runs/$name/eval.csv"
  done
}

pack() {  # one tar per run (files back from a device call are limited to 16 MiB each) and plan.txt
  for name in "${names[@]}"; do
    tar -cf "$out/$name.tar" -C "$runs" --exclude='tensorboard' --exclude='*.pt.tmp' --exclude='checkpoint.pt.prev' \
      "$name" "$name.log"
  done
  cp "$runs/plan.txt" "$out/"
  ls -la "$out"
}

case $phase in
start)
  total=${3:?total minutes}
  nvidia-smi --query-gpu=name --format=csv,noheader
  rm -rf "$runs"; mkdir -p "$runs"
  for ext in heron.ops.wkv7.cuda:load heron.ops.rosa:native_cuda heron.ops.rosa:native_cpu; do
    python3 -c "import importlib; m, f = '$ext'.split(':'); getattr(importlib.import_module(m), f)()" &
  done
  wait
  python3 -m heron train arith --config examples/arith/config.toml "${common[@]}" --steps "${PROBE_STEPS:-200}" --log-every $(( ${PROBE_STEPS:-200} / 8 )) \
    --eval-every 0 --ckpt-every 0 --time-limit 0 --out "$runs/probe" > "$runs/probe.log" 2>&1 \
    || { tail -30 "$runs/probe.log"; exit 1; }
  # runs share a card when there are more variants than GPUs: budget the time measured alone times
  # the runs per card; 10% of the time goes to evaluations and checkpoints
  per_card=$(( (${#names[@]} + gpus - 1) / gpus ))
  read -r steps step_s < <(python3 tools/lm_session_tools.py steps "$runs/probe" "$((total * 60))" \
    --safety "$(python3 -c "print(0.9 / $per_card)")" --min "${MIN_STEPS:-1000}" --round 100) || exit 1
  echo "probe: $step_s s per step alone; $gpus GPU(s), $per_card run(s) per card -> $steps steps" | tee "$runs/plan.txt"
  launch() {
    local name=$1
    CUDA_VISIBLE_DEVICES=$2 python3 -m heron train arith --config examples/arith/config.toml "${common[@]}" --time-limit "$minutes" \
      $(variant_args "$name" "$steps") --out "$runs/$name"
  }
  run_all launch
  summarise | tee "$out/summary.txt"
  pack
  ;;
resume)
  from=${3:?folder with the files of an earlier phase}
  rm -rf "$runs"; mkdir -p "$runs"
  for name in "${names[@]}"; do tar -xf "$from/$name.tar" -C "$runs" || exit 1; done
  cp "$from/plan.txt" "$runs/" && cat "$runs/plan.txt"
  proceed() {
    local name=$1
    CUDA_VISIBLE_DEVICES=$2 python3 -m heron train arith --resume --out "$runs/$name" --time-limit "$minutes" "${common[@]}"
  }
  run_all proceed
  summarise | tee "$out/summary.txt"
  score() {  # each exported model of one run on the official draw (seed 42) and a fresh one
    local name=$1
    for model in "$runs/$name/model.safetensors" "$runs/$name/best/model.safetensors"; do
      [ -f "$model" ] || continue
      for seed in 42 1234; do
        echo "== $model, draw seed $seed: $(CUDA_VISIBLE_DEVICES=$2 python3 -m heron eval arith --checkpoint "$model" \
          --digits 20 --seed "$seed" --device "$device" --no-progress 2>&1 | tail -n 1)"
      done
    done
  }
  for name in "${names[@]}"; do score "$name" 0 > "$runs/$name.scores" 2>&1 & done
  wait
  cat "$runs"/*.scores | tee -a "$out/summary.txt"
  pack
  ;;
*)
  echo "unknown phase $phase" >&2
  exit 2
  ;;
esac
