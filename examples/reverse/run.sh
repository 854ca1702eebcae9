#!/usr/bin/env bash
# Train the reversal recipe and its ROSA-free twin side by side on one GPU, in slices.
#
#   examples/reverse/run.sh [MINUTES]      # default 8.5 minutes of training per call
#
# Each call trains both runs for at most MINUTES (they checkpoint and stop), so a machine that
# limits one command to 10 minutes can finish the recipe over a few calls: call again until it
# prints the results. The two 40K-parameter models are launch-bound, so sharing the card costs
# each run far less than running them one after the other. Needs only PYTHONPATH (no install).
# With $OUT set (the device machine's result folder), the CSVs, curves, logs and the model are
# copied there.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
minutes=${1:-8.5}
runs=${RUNS_DIR:-runs}

train() {
  local name=$1; shift
  # resuming a finished run returns at once ("done: ... no new steps"); model.safetensors alone
  # does not mean finished: a run stopped by --time-limit leaves one too
  if [ -f "$runs/$name/checkpoint.pt" ]; then
    python3 -m heron train reverse --resume --out "$runs/$name" --time-limit "$minutes" --no-progress
  else
    python3 -m heron train reverse --config examples/reverse/config.toml --out "$runs/$name" \
      --time-limit "$minutes" --no-progress "$@"
  fi
}

mkdir -p "$runs"
train reverse > "$runs/reverse.log" 2>&1 &
with_rosa=$!
train reverse-no-rosa --model-config rosa=null > "$runs/reverse-no-rosa.log" 2>&1 &
without_rosa=$!
status=0
wait $with_rosa || status=$?
wait $without_rosa || status=$?
tail -n 3 "$runs/reverse.log" "$runs/reverse-no-rosa.log"
[ $status -eq 0 ] || exit $status

finished() { grep -q "done: step" "$runs/$1.log"; }  # the trainer's last line once the schedule completes
if finished reverse && finished reverse-no-rosa; then
  python3 -m heron.train.plot "$runs/reverse" --png "$runs/reverse/curve.png" --title "reverse 1-60, RWKV-8 + ROSA (40K)"
  python3 -m heron.train.plot "$runs/reverse-no-rosa" --png "$runs/reverse-no-rosa/curve.png" --title "reverse 1-60, time-mix only"
  for name in reverse reverse-no-rosa; do
    echo "== $name: fresh draw (seed 1234, 20 per digit count)"
    python3 -m heron eval reverse --checkpoint "$runs/$name/model.safetensors" --digits 60 --samples 20 --seed 1234 \
      --device "$(python3 -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')" --no-progress
  done
  echo "publish: cp $runs/reverse/{train.csv,eval.csv,curve.png,model.safetensors} examples/reverse/"
fi
if [ -n "${OUT:-}" ]; then
  for name in reverse reverse-no-rosa; do
    mkdir -p "$OUT/$name"
    cp "$runs/$name.log" "$OUT/$name/" 2>/dev/null || true
    for file in train.csv eval.csv curve.png model.safetensors; do
      cp "$runs/$name/$file" "$OUT/$name/" 2>/dev/null || true
    done
  done
fi
