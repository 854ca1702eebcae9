#!/usr/bin/env bash
# Issue 9: training-step throughput on 1-4 GPUs, one device-machine call (~6 minutes).
# Writes at most 8 flat files to $OUT: train_step.log (everything, in order), one_gpu.json,
# multi_gpu.json, fsdp.json, loss_w1.csv, loss_w2.csv, loss_w4.csv, gpu.txt.
# Every part is bounded by `timeout` and may fail without stopping the others.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
out=${OUT:-/tmp/out}; mkdir -p "$out"
log="$out/train_step.log"; : > "$log"
bench=benchmarks/train_step.py
gpus=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | wc -l)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$out/gpu.txt" 2>&1
started=$(date +%s)
part() {  # part SECONDS TITLE COMMAND...
  local limit=$1 title=$2; shift 2
  echo "=== $title ($(( $(date +%s) - started )) s in, limit $limit s)" | tee -a "$log"
  timeout --kill-after=10 "$limit" "$@" >> "$log" 2>&1
  local rc=$?; echo "=== $title: exit $rc" | tee -a "$log"
}
run_n() { local n=$1; shift; python3 -m torch.distributed.run --standalone --nproc_per_node="$n" "$@"; }

# 0. build the CUDA extensions (WKV7, ROSA) once, outside the timed parts
part 120 "build extensions" python3 $bench --configs rwkv8-rosa --ctx 128 --batch 2 --steps 1 --warmup 1 --no-breakdown
# 1. one GPU: the three configurations at ctx 512 (the baseline of the scaling figures)
part 75 "1 GPU ctx 512" python3 $bench --ctx 512 --batch 16 --steps 10 --warmup 3 --json "$out/one_gpu.json"
# 2. several GPUs, DDP, per-GPU batch fixed
if [ "$gpus" -ge 2 ]; then
  part 45 "2 GPUs DDP ctx 512" run_n 2 $bench --ctx 512 --batch 16 --steps 10 --warmup 3 --no-breakdown \
    --baseline "$out/one_gpu.json" --json "$out/multi_gpu_2.json"
fi
if [ "$gpus" -ge 4 ]; then
  part 45 "4 GPUs DDP ctx 512" run_n 4 $bench --ctx 512 --batch 16 --steps 10 --warmup 3 --no-breakdown \
    --baseline "$out/one_gpu.json" --json "$out/multi_gpu.json"
fi
# 3. loss curves: the same global batch on 1, 2 and 4 GPUs, 200 steps each
part 50 "loss curve 1 GPU" python3 $bench --loss-curve 200 --batch 32 --ctx 512 --csv "$out/loss_w1.csv"
[ "$gpus" -ge 2 ] && part 40 "loss curve 2 GPUs" run_n 2 $bench --loss-curve 200 --batch 32 --ctx 512 --csv "$out/loss_w2.csv"
[ "$gpus" -ge 4 ] && part 40 "loss curve 4 GPUs" run_n 4 $bench --loss-curve 200 --batch 32 --ctx 512 --csv "$out/loss_w4.csv"
# 4. FSDP2 on every GPU: RWKV-7 L24-D2048 and RWKV-8 L12-D768 (DeepEmbed sharded)
n=$(( gpus >= 4 ? 4 : (gpus >= 1 ? gpus : 1) ))
part 60 "FSDP2 $n GPUs" run_n "$n" $bench --parallel fsdp --configs rwkv7-L24-D2048,rwkv8 --ctx 512 --batch 8 \
  --steps 6 --warmup 2 --no-breakdown --json "$out/fsdp.json"
# 5. ctx 4096 on one GPU, if time is left (bounded to finish near 6 minutes)
left=$(( 340 - ($(date +%s) - started) ))
if [ "$left" -gt 30 ]; then
  part "$left" "1 GPU ctx 4096" python3 $bench --ctx 4096 --batch 2 --steps 5 --warmup 2 --chunked-ce \
    --json "$out/one_gpu_4096.json"
fi
# keep at most 8 files: fold the 2-GPU JSON and the ctx-4096 JSON into the log
for extra in multi_gpu_2.json one_gpu_4096.json; do
  [ -f "$out/$extra" ] && { echo "=== $extra"; cat "$out/$extra"; } >> "$log" && rm -f "$out/$extra"
done
echo "total $(( $(date +%s) - started )) s" | tee -a "$log"
grep -E "tokens/s|target|scaling|breakdown|loss curve|FAILED|Error|exit" "$log" | tail -60
ls -la "$out"
