#!/usr/bin/env bash
# Issue 9: training-step throughput on 1-4 GPUs (up to ~25 minutes for everything; the limits
# below are what the 2026-11-27 H100 runs showed each part needs, with room).
# PARTS (comma-separated, default all) picks what runs, so a session can run the one-GPU parts
# early on a free card and the multi-GPU parts once every card is free:
#   build   the CUDA extensions                one      1 GPU, ctx 512, the three configurations
#   compile 1 GPU, RWKV-7, batch 32, with and without torch.compile
#   multi   2 and 4 GPUs, DDP                   loss1 / lossN   200-step loss curves, 1 / 2 and 4 GPUs
#   fsdp    FSDP2 on 4 GPUs                     ctx4096  1 GPU, ctx 4096, chunked cross-entropy
# Writes flat files to $OUT: train_step.log (everything, in order), one_gpu.json, multi_gpu.json,
# fsdp.json, loss_w1.csv, loss_w2.csv, loss_w4.csv, gpu.txt (multi needs one_gpu.json there).
# Every part is bounded by `timeout` and may fail without stopping the others.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
site=$(tools/ensure_wheels.sh /tmp/heron-site) && export PYTHONPATH="$PYTHONPATH:$site"  # music21: the demo corpus
out=${OUT:-/tmp/out}; mkdir -p "$out"
log="$out/train_step.log"; touch "$log"
PARTS=",${PARTS:-build,one,compile,multi,loss1,lossN,fsdp,ctx4096},"
want() { [[ $PARTS == *",$1,"* ]]; }
bench=benchmarks/train_step.py
gpus=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | wc -l)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$out/gpu.txt" 2>&1
. tools/session_parts.sh  # part SECONDS TITLE COMMAND...
# (torchrun through python3 -m: `timeout` cannot run a shell function)

# 0. build the CUDA extensions (WKV7, ROSA) once, outside the timed parts
want build && part 120 "build extensions" python3 $bench --configs rwkv8-rosa --ctx 128 --batch 2 --steps 1 --warmup 1 --no-breakdown
# 1. one GPU: the three configurations at ctx 512 (the baseline of the scaling figures)
want one && part 300 "1 GPU ctx 512" python3 $bench --ctx 512 --batch 16 --steps 10 --warmup 3 --json "$out/one_gpu.json"
want loss1 && part 90 "loss curve 1 GPU" python3 $bench --loss-curve 200 --batch 32 --ctx 512 --csv "$out/loss_w1.csv"
# 1b. RWKV-7 at batch 32, eager and compiled (does torch.compile pay here?)
if want compile; then
  part 60 "1 GPU ctx 512 batch 32 eager" python3 $bench --configs rwkv7 --ctx 512 --batch 32 --steps 10 --warmup 3 --no-breakdown
  part 300 "1 GPU ctx 512 batch 32 compiled" python3 $bench --configs rwkv7 --ctx 512 --batch 32 --steps 10 --warmup 3 \
    --no-breakdown --compile
fi
# 1c. ctx 4096 on one GPU
want ctx4096 && part 180 "1 GPU ctx 4096" python3 $bench --ctx 4096 --batch 2 --steps 5 --warmup 2 --chunked-ce \
    --json "$out/one_gpu_4096.json"
# 2. several GPUs, DDP, per-GPU batch fixed
if want multi && [ "$gpus" -ge 2 ]; then
  part 150 "2 GPUs DDP ctx 512" python3 -m torch.distributed.run --standalone --nproc_per_node=2 $bench --ctx 512 --batch 16 --steps 10 --warmup 3 --no-breakdown \
    --baseline "$out/one_gpu.json" --json "$out/multi_gpu_2.json"
fi
if want multi && [ "$gpus" -ge 4 ]; then
  part 150 "4 GPUs DDP ctx 512" python3 -m torch.distributed.run --standalone --nproc_per_node=4 $bench --ctx 512 --batch 16 --steps 10 --warmup 3 --no-breakdown \
    --baseline "$out/one_gpu.json" --json "$out/multi_gpu.json"
fi
# 3. loss curves: the same global batch on 2 and 4 GPUs as on one, 200 steps each
want lossN && [ "$gpus" -ge 2 ] && part 100 "loss curve 2 GPUs" python3 -m torch.distributed.run --standalone --nproc_per_node=2 $bench --loss-curve 200 --batch 32 --ctx 512 --csv "$out/loss_w2.csv"
want lossN && [ "$gpus" -ge 4 ] && part 100 "loss curve 4 GPUs" python3 -m torch.distributed.run --standalone --nproc_per_node=4 $bench --loss-curve 200 --batch 32 --ctx 512 --csv "$out/loss_w4.csv"
# 4. FSDP2 on every GPU: RWKV-7 L24-D2048 and RWKV-8 L12-D768 (DeepEmbed sharded)
n=$(( gpus >= 4 ? 4 : (gpus >= 1 ? gpus : 1) ))
want fsdp && part 240 "FSDP2 $n GPUs" python3 -m torch.distributed.run --standalone --nproc_per_node="$n" $bench --parallel fsdp --configs rwkv7-L24-D2048,rwkv8 --ctx 512 --batch 8 \
  --steps 6 --warmup 2 --no-breakdown --json "$out/fsdp.json"
# keep at most 8 files: fold the 2-GPU JSON and the ctx-4096 JSON into the log
for extra in multi_gpu_2.json one_gpu_4096.json; do
  [ -f "$out/$extra" ] && { echo "=== $extra"; cat "$out/$extra"; } >> "$log" && rm -f "$out/$extra"
done
echo "total $(( $(date +%s) - started )) s" | tee -a "$log"
grep -E "tokens/s|target|scaling|breakdown|loss curve|FAILED|Error|exit" "$log" | tail -60
ls -la "$out"
