#!/usr/bin/env bash
# One device-machine call: size the reversal recipe to a training budget from a short probe,
# train it and its ROSA-free twin side by side, run the GPU test selection meanwhile, then score
# both models on a fresh draw. Usage: tools/gpu_reverse_session.sh TRAIN_SECONDS
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
budget=${1:-360}
out=${OUT:-/tmp/out}; mkdir -p "$out"
runs=/tmp/runs; rm -rf "$runs"; mkdir -p "$runs"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"
common=(--config examples/reverse/config.toml --no-progress --no-tensorboard --time-limit 0)

# 1. probe: 60 steps (builds the CUDA extensions on the way)
python3 -m heron train reverse "${common[@]}" --steps 60 --log-every 10 --eval-every 0 --ckpt-every 0 \
  --out "$runs/probe" > "$out/probe.log" 2>&1 || { tail -30 "$out/probe.log"; exit 1; }
step_s=$(python3 - "$runs/probe/train.csv" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
a, b = rows[1], rows[-1]
print((float(b["elapsed_s"]) - float(a["elapsed_s"])) / (int(b["step"]) - int(a["step"])))
PY
)
steps=$(python3 -c "print(int($budget / ($step_s * 1.35)) // 50 * 50)")
c1=$((steps / 10)); c2=$((steps / 5))
echo "probe: $step_s s/step alone -> $steps steps, curriculum [[0,20],[$c1,40],[$c2,60]]" | tee "$out/plan.txt"
plan=(--steps "$steps" --eval-every $((steps / 6)) --ckpt-every $((steps / 3)) --log-every 20
      --task-option "curriculum=[[0,20],[$c1,40],[$c2,60]]")

# 2. both runs side by side, GPU tests meanwhile
python3 -m heron train reverse "${common[@]}" "${plan[@]}" --out "$runs/reverse" > "$out/reverse.log" 2>&1 &
p1=$!
python3 -m heron train reverse "${common[@]}" "${plan[@]}" --model-config rosa=null \
  --out "$runs/reverse-no-rosa" > "$out/reverse-no-rosa.log" 2>&1 &
p2=$!
timeout 300 python3 -m pytest -q -m gpu -p no:cacheprovider tests > "$out/gpu_tests.log" 2>&1
echo "gpu tests exit $?"; tail -5 "$out/gpu_tests.log"
wait $p1; echo "reverse exit $?"; wait $p2; echo "no-rosa exit $?"
tail -4 "$out/reverse.log" "$out/reverse-no-rosa.log"

# 3. curves and a fresh draw (seed 1234, 20 per digit count)
for name in reverse reverse-no-rosa; do
  cp "$runs/$name/train.csv" "$out/$name-train.csv" 2>/dev/null
  cp "$runs/$name/eval.csv" "$out/$name-eval.csv" 2>/dev/null
  [ -f "$runs/$name/model.safetensors" ] || continue
  python3 -m heron eval reverse --checkpoint "$runs/$name/model.safetensors" --digits 60 --samples 20 \
    --seed 1234 --device cuda --no-progress 2>&1 | tail -3 | tee "$out/$name-fresh.txt"
done
cp "$runs/reverse/model.safetensors" "$out/reverse-model.safetensors" 2>/dev/null
cp "$runs/reverse-no-rosa/model.safetensors" "$out/no-rosa-model.safetensors" 2>/dev/null
ls -la "$out"
