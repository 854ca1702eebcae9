#!/usr/bin/env bash
# Issue 9: training-step throughput. The default parts need ONE GPU and about 8 minutes (each
# bounded by `timeout`: 600 s at worst, the per-call limit); the multi-GPU parts are opt-in through PARTS.
# PARTS (comma-separated, default build,eager,compiled,rosa_compiled):
#   build          the CUDA extensions (WKV7, ROSA, ROSA estimators), in parallel, before any timing
#   eager          1 GPU, ctx 512, batch 16, eager: rwkv7 (the baseline of the ROSA ratio), rwkv8
#                  (DeepEmbed), rwkv8-rosa1-value (ROSA-QKV 1-bit, value estimator: the cheapest),
#                  rwkv8-rosa (1-bit, window) and rwkv8-rosa-unbounded (the issue-9 diagnosis: the
#                  estimator without rosa_max_gain; its gradient norm should be flagged)
#   compiled       1 GPU, RWKV-7 L12-D768 bf16 --compile, 16384 tokens per step: ctx 512 x batch 32
#                  (the 150k tokens/s target) and ctx 4096 x batch 4 (the same logits memory, so
#                  both run the plain cross-entropy)
#   rosa_compiled  1 GPU, ctx 512 batch 32 --compile: rwkv8, rwkv8-rosa1-value, rwkv8-rosa1-shared
#                  (ROSA_COMPILED_CONFIGS overrides the list)
#   multi, loss1, lossN, fsdp   the 2/4-GPU DDP rows, loss curves and FSDP2 (earlier sessions)
# Every timing part prints each configuration's figures (with MFU) as soon as they exist and has a
# per-configuration --time-budget inside its `timeout`, so one slow configuration cannot cost the
# others; compilation is reported apart ("compilation ... not timed"). Files in $OUT (<= 8):
# train_step.log (everything, in order), gpu.txt, eager.json, compiled.json, rosa_compiled.json
# (+ multi_gpu.json, fsdp.json, loss_w*.csv when those parts run).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4 MAX_JOBS=${MAX_JOBS:-16}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
out=${OUT:-/tmp/out}; mkdir -p "$out"
log="$out/train_step.log"; touch "$log"
PARTS=",${PARTS:-build,eager,compiled,rosa_compiled},"
# the part names of earlier versions (tools/gpu_session.sh uses them): one -> eager,
# compile / ctx4096 -> compiled (which holds both context lengths)
PARTS=${PARTS//,one,/,eager,}; PARTS=${PARTS//,compile,/,compiled,}; PARTS=${PARTS//,ctx4096,/,compiled,}
want() { [[ $PARTS == *",$1,"* ]]; }
bench=benchmarks/train_step.py
# BENCH_EXTRA: options appended to every benchmark call, e.g. BENCH_EXTRA=--tiny for a CPU dry run
# of the script itself (the later options win)
read -r -a extra <<< "${BENCH_EXTRA:-}"
gpus=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | wc -l)
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader > "$out/gpu.txt" 2>&1
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" >> "$out/gpu.txt" 2>&1
cat "$out/gpu.txt" | tee -a "$log"
. tools/session_parts.sh  # part SECONDS TITLE COMMAND...; sets $started
# (torchrun through python3 -m: `timeout` cannot run a shell function)

build_extensions() {  # the three native builds side by side (~45 s on an H100 host)
  local ext pids=()
  for ext in heron.ops.wkv7.cuda:load heron.ops.rosa:native_cuda heron.ops.rosa.grad:native_flip_cuda \
             heron.ops.rosa:native_cpu heron.ops.rosa.grad:native_flip_cpu; do
    python3 -c "import importlib; m, f = '$ext'.split(':'); getattr(importlib.import_module(m), f)(); print('built $ext')" &
    pids+=($!)
  done
  local rc=0; for pid in "${pids[@]}"; do wait "$pid" || rc=1; done; return $rc
}
export -f build_extensions

# 0. native builds, outside every timed part (the first use would otherwise build inside a timing)
want build && part 100 "build extensions" bash -c build_extensions
# 1. eager, batch 16, ctx 512: ~10-25 s per configuration (the window estimator's steps are the slow ones)
want eager && part 110 "1 GPU ctx 512 batch 16 eager" python3 $bench \
  --configs ${EAGER_CONFIGS:-rwkv7,rwkv8,rwkv8-rosa1-value,rwkv8-rosa,rwkv8-rosa-unbounded} --ctx 512 --batch 16 \
  --steps 8 --warmup 2 --no-breakdown --time-budget 18 --json "$out/eager.json" "${extra[@]}"
# 2. RWKV-7 compiled at 16384 tokens per step: ctx 512 x 32 (the target) and ctx 4096 x 4
#    (~25 s of compilation per context length on an H100 host, reported apart)
want compiled && part 140 "1 GPU RWKV-7 compiled, ctx 512 x 32 and 4096 x 4" python3 $bench \
  --configs rwkv7 --ctx 512 4096 --tokens-per-step 16384 --compile \
  --steps 10 --warmup 2 --no-breakdown --time-budget 65 --json "$out/compiled.json" "${extra[@]}"
# 3. RWKV-8 and the ROSA configurations compiled at the target's shape (ctx 512 x batch 32; the
#    compiled part above is the same-run RWKV-7 baseline; ROSA_COMPILED_CONFIGS changes the list;
#    the ROSA layers compile into each block's graph: heron::rosa_* custom ops)
want rosa_compiled && part 250 "1 GPU RWKV-8 (+ROSA) compiled ctx 512 batch 32" python3 $bench \
  --configs ${ROSA_COMPILED_CONFIGS:-rwkv8,rwkv8-rosa1-value,rwkv8-rosa1-shared} --ctx 512 --batch 32 \
  --compile --steps 10 --warmup 2 --no-breakdown --time-budget 60 --json "$out/rosa_compiled.json" "${extra[@]}"

# --- opt-in: several GPUs (earlier sessions' parts; need the eager baseline for the scaling) ---
if want multi && [ "$gpus" -ge 2 ]; then
  for n in 2 4; do
    [ "$gpus" -ge "$n" ] || continue
    part 150 "$n GPUs DDP ctx 512" python3 -m torch.distributed.run --standalone --nproc_per_node=$n $bench \
      --configs rwkv7,rwkv8,rwkv8-rosa1-value --ctx 512 --batch 16 --steps 10 --warmup 3 --no-breakdown \
      --time-budget 40 --baseline "$out/eager.json" --json "$out/multi_gpu_$n.json"
  done
fi
if want loss1 || want lossN; then  # music21 for the demo corpus, from the carried wheels
  site=$(tools/ensure_wheels.sh /tmp/heron-site) && export PYTHONPATH="$PYTHONPATH:$site"
fi
want loss1 && part 90 "loss curve 1 GPU" python3 $bench --loss-curve 200 --batch 32 --ctx 512 --csv "$out/loss_w1.csv"
for n in 2 4; do
  want lossN && [ "$gpus" -ge "$n" ] && part 100 "loss curve $n GPUs" python3 -m torch.distributed.run --standalone \
    --nproc_per_node=$n $bench --loss-curve 200 --batch 32 --ctx 512 --csv "$out/loss_w$n.csv"
done
n=$(( gpus >= 4 ? 4 : (gpus >= 1 ? gpus : 1) ))
want fsdp && part 240 "FSDP2 $n GPUs" python3 -m torch.distributed.run --standalone --nproc_per_node="$n" $bench \
  --parallel fsdp --configs rwkv7-L24-D2048,rwkv8 --ctx 512 --batch 8 --steps 6 --warmup 2 --no-breakdown \
  --time-budget 100 --json "$out/fsdp.json"
# keep at most 8 files: fold the 2-GPU JSON into the log
for extra in multi_gpu_2.json; do
  [ -f "$out/$extra" ] && { echo "=== $extra"; cat "$out/$extra"; } >> "$log" && rm -f "$out/$extra"
done
[ -f "$out/multi_gpu_4.json" ] && mv "$out/multi_gpu_4.json" "$out/multi_gpu.json"
echo "total $(( $(date +%s) - started )) s" | tee -a "$log"
grep -E "^(rwkv|summary)|tokens/s|target|compilation|training loss|WARNING|scaling|loss curve|FAILED|Error|exit" "$log" | tail -60
ls -la "$out"
