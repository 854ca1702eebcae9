#!/usr/bin/env bash
# Issue 7 (copy ability of small LMs) and issue 8 (music) on one 4-GPU machine, in two calls:
#
#   tools/gpu_lm_session.sh start            launch the whole pipeline in the background (setsid nohup):
#                                            trainings, then their evaluations; print the first log
#                                            lines; return in about a minute
#   tools/gpu_lm_session.sh status           progress of the jobs (tails of the logs)
#   tools/gpu_lm_session.sh collect [SECS]   wait up to SECS (default 500) for the pipeline; when it is done,
#                                            write the results into $OUT and exit 0; else exit 3 (call
#                                            again). FORCE=1 packs whatever exists after SECS.
#
# Pipeline (each training: a short probe sizes --steps to the budget, then the run with --time-limit):
#   GPU_A (default 0): copy-rosalm (pure ROSA LM), copy-rwkv7 (RWKV-7 only), copy eval of copy-rwkv7
#   GPU_B (default 1): music-rwkv7 (examples/music/config_rwkv7.json), copy-rwkv8 (RWKV-8 + ROSA), its copy eval
#   GPU_C (default 2): music-rosa (examples/music/config.toml), then examples/music/make_examples.py once
#                      both music runs are done, then the copy eval of copy-rosalm
# Timeline with TRAIN_MIN=8 on H100s: music models and make_examples done ~12-15 min after start,
# the copy LMs and their evaluations ~20-23 min after start (TRAIN_MIN=7: ~2 min less).
# Environment: TRAIN_MIN (training minutes per run, default 8; --time-limit and the step budget),
#   GPU_A/GPU_B/GPU_C, SESSION_DIR (default /tmp/heron-lm-session), OUT (results; default
#   $SESSION_DIR/out), HERON_SESSION_TINY=1 (CPU smoke mode: tiny models, seconds of training,
#   8 copy trials, 2 tunes), COPY_BITS (1 or 4: ROSA width of the two ROSA LMs, default 1;
#   COPY_BITS_ROSALM / COPY_BITS_RWKV8 set one of them),
#   COPY_EXTRA (more --model-config fields of the two ROSA LMs), COPY_TASK_OPTIONS (more
#   --task-option fields of all three copy LMs, e.g. "repeat_prob=0.5": the repeat augmentation of
#   docs/training.md), COPY_PASSES (cap the copy LMs' steps at this many passes over the demo
#   corpus's training split; 0: no cap), EVAL_POINTS (validation evaluations per run, default 8).
# Missing Python packages (music21 and its pure-Python needs) are installed from ./.whl when present.
set -uo pipefail
SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PHASE=${1:-}
TINY=${HERON_SESSION_TINY:-0}
S=${SESSION_DIR:-/tmp/heron-lm-session}
mkdir -p "$S"; S=$(cd "$S" && pwd)
OUT=${OUT:-$S/out}
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
GPU_A=${GPU_A:-0}; GPU_B=${GPU_B:-1}; GPU_C=${GPU_C:-2}
COPY_BITS=${COPY_BITS:-1}
COPY_BITS_ROSALM=${COPY_BITS_ROSALM:-$COPY_BITS}; COPY_BITS_RWKV8=${COPY_BITS_RWKV8:-$COPY_BITS}
SRC=$S/src
export PYTHONPATH="$SRC:$S/site" PYTHONUNBUFFERED=1 MPLBACKEND=Agg PYTHONDONTWRITEBYTECODE=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
if [ "$TINY" = 1 ]; then
  export OMP_NUM_THREADS=1
  TRAIN_MIN=${TRAIN_MIN:-0.25}; DEVICE=cpu; PROBE_STEPS=6; LOG_EVERY=2
  COPY_TRIALS=8; MUSIC_EVAL=(--n-eval 2 --samples 2 --max-tokens 96 --quick)
else
  export OMP_NUM_THREADS=${JOB_THREADS:-8}
  TRAIN_MIN=${TRAIN_MIN:-8}; DEVICE=cuda; PROBE_STEPS=30; LOG_EVERY=10
  COPY_TRIALS=200; MUSIC_EVAL=()
fi
TRAIN_S=$(python3 -c "print(int(float('$TRAIN_MIN') * 60))")
COPY_PASSES=${COPY_PASSES:-0}
EVAL_POINTS=${EVAL_POINTS:-8}

# --- the five trainings -------------------------------------------------------------------
# Copy LMs (issue 7): demo corpus, World tokenizer (65,536 rows), 4 layers x 256, T = 512, B = 32,
# lr 1e-3 -> 1e-5. No DeepEmbed (it would add 65,536 x 256 per layer), so the three have equal
# parameter counts: RWKV-8+ROSA 38,090,496; RWKV-7 with dim_ffn 1541: 38,090,496; pure ROSA LM
# with dim_ffn 1696: 38,090,752 (33,554,432 of each are embedding + head).
# ROSA estimator floor tau = 0.1 (docs/benchmarks/training.md: 1e-3 gives gradient norms 5-100).
job_args() {  # NAME -> TASK ARGS... in the array ARGS
  local copy_extra=(); read -ra copy_extra <<< "${COPY_EXTRA:-}"  # more --model-config fields, ROSA LMs only
  # more --task-option fields, all three copy LMs (one --task-option list: a second one would replace the first)
  local copy_options=(); read -ra copy_options <<< "${COPY_TASK_OPTIONS:-}"
  local copy=(text --lr 1e-3 --lr-final 1e-5 --warmup 100 --seed 0)
  local music_tiny=()
  if [ "$TINY" = 1 ]; then
    COPY_BATCH=4; COPY_SEQ=64
    copy+=(--eval-samples 1)
    music_tiny=(--batch-size 4 --task-option seq_len=64 --eval-samples 1)
    local small=(n_layer=1 n_embd=32)
  else
    COPY_BATCH=32; COPY_SEQ=512
    local small=()
  fi
  copy+=(--batch-size $COPY_BATCH --task-option seq_len=$COPY_SEQ "${copy_options[@]}")
  case $1 in
    copy-rosalm) ARGS=("${copy[@]}" --model rosa_lm --model-config "${small[@]}" dim_ffn=1696 bits=$COPY_BITS_ROSALM rosa_tau=0.1
                       "${copy_extra[@]}") ;;
    copy-rwkv8)  ARGS=("${copy[@]}" --model-config "${small[@]}" ${small:+head_size=16} deep_embed=false
                       rosa=qkv$COPY_BITS_RWKV8 rosa_tau=0.1 "${copy_extra[@]}") ;;
    copy-rwkv7)  ARGS=("${copy[@]}" --model-config "${small[@]}" ${small:+head_size=16} rosa=null deep_embed=false dim_ffn=1541) ;;
    music-rosa)  ARGS=(abc --config "$SRC/examples/music/config.toml" "${music_tiny[@]}")
                 if [ "$TINY" = 1 ]; then ARGS+=(--model-config n_layer=1 n_embd=32 head_size=16); fi ;;
    music-rwkv7) ARGS=(abc --config "$SRC/examples/music/config_rwkv7.json" "${music_tiny[@]}")
                 if [ "$TINY" = 1 ]; then ARGS+=(--model-config n_layer=1 n_embd=32 head_size=16); fi ;;
    *) echo "unknown job $1"; return 1 ;;
  esac
  return 0  # (a failed test as the last command of a branch must not read as a failed job)
}
# the music runs first, so make_examples (GPU C) overlaps the second copy trainings.
# LM_CHAIN_A/B/C (space-separated job names) replace a chain; an empty chain starts nothing.
read -ra CHAIN_A <<< "${LM_CHAIN_A-copy-rosalm copy-rwkv7 eval:copy-rwkv7}"
read -ra CHAIN_B <<< "${LM_CHAIN_B-music-rwkv7 copy-rwkv8 eval:copy-rwkv8}"
read -ra CHAIN_C <<< "${LM_CHAIN_C-music-rosa eval:music eval:copy-rosalm}"
chain_jobs() {  # LETTER -> the chain's jobs in the array JOBS
  case $1 in A) JOBS=("${CHAIN_A[@]}");; B) JOBS=("${CHAIN_B[@]}");; C) JOBS=("${CHAIN_C[@]}");; esac
}
active_letters() { local l; for l in A B C; do chain_jobs $l; [ ${#JOBS[@]} -gt 0 ] && echo $l; done; }

log() { echo "[$(date -u +%H:%M:%S)] $*"; }

train_job() {  # NAME: probe, size the schedule, train with the time limit, export if stopped early
  local name=$1 run=$S/runs/$1 probe=$S/runs/$1-probe
  job_args "$name" || { log "$name: unknown job"; echo 1 > "$S/status/$name.rc"; return 1; }
  local common=(--device "$DEVICE" --no-progress --no-tensorboard)
  log "$name: probe ($PROBE_STEPS steps) on CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-}"
  rm -rf "$probe"
  timeout -k 30 900 python3 -m heron train "${ARGS[@]}" "${common[@]}" --steps "$PROBE_STEPS" \
      --log-every $((PROBE_STEPS / 6)) --eval-every 0 --ckpt-every 0 --eval-samples 1 --time-limit 0 \
      --out "$probe" > "$S/logs/$name-probe.log" 2>&1
  local rc=$?
  tail -3 "$S/logs/$name-probe.log"
  if [ $rc -ne 0 ]; then log "$name: probe failed (exit $rc)"; echo "$rc" > "$S/status/$name.rc"; return $rc; fi
  local plan cap=()
  # the copy LMs overfit the 2.5M-token corpus at 17-59 passes (docs/benchmarks/copy.md, session 4)
  case $name in copy-*) [ "$COPY_PASSES" != 0 ] && cap=(--max-passes "$COPY_PASSES" --tokens-per-step $((COPY_BATCH * COPY_SEQ)));; esac
  plan=$(python3 "$SRC/tools/lm_session_tools.py" steps "$probe" "$TRAIN_S" --safety 0.85 \
         --round $([ "$TINY" = 1 ] && echo 1 || echo 50) "${cap[@]}") || { echo 1 > "$S/status/$name.rc"; return 1; }
  local steps=${plan% *} step_s=${plan#* }
  if [ "$name" = music-rwkv7 ] && [ "${MUSIC_SAME_STEPS:-1}" = 1 ]; then
    # the baseline trains the ROSA model's step count (same recipe, same samples), not its own
    # time budget: its steps are cheaper, and equal steps are the comparison the issue asks for
    local other=$S/runs/music-rosa/session-plan.json
    for _ in $(seq 1 120); do [ -f "$other" ] && break; sleep 5; done
    if [ -f "$other" ]; then
      steps=$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['steps'])" "$other")
      log "$name: the step count of music-rosa ($steps)"
    else
      log "$name: no music-rosa plan after 10 minutes; keeping its own step count"
    fi
  fi
  local every=$(( steps / EVAL_POINTS > 0 ? steps / EVAL_POINTS : 1 ))
  mkdir -p "$run"
  local cmd=(python3 -m heron train "${ARGS[@]}" "${common[@]}" --steps "$steps" --time-limit "$TRAIN_MIN"
             --eval-every "$every" --ckpt-every $(( steps / 3 > 0 ? steps / 3 : 1 )) --log-every "$LOG_EVERY" --out "$run")
  python3 - "$run/session-plan.json" "$steps" "$step_s" "$TRAIN_S" "${cmd[@]}" <<'PY'
import json, sys
path, steps, step_s, budget, *cmd = sys.argv[1:]
json.dump({"steps": int(steps), "seconds_per_step": float(step_s), "budget_s": int(budget), "command": " ".join(cmd)},
          open(path, "w"), indent=1)
PY
  log "$name: $step_s s/step in the probe -> $steps steps for ${TRAIN_S}s (time limit $TRAIN_MIN min)"
  timeout -k 30 $((TRAIN_S + 300)) "${cmd[@]}" > "$run/session.log" 2>&1
  rc=$?
  tail -3 "$run/session.log"
  if [ ! -f "$run/model.safetensors" ] && [ -f "$run/checkpoint.pt" ]; then
    log "$name: no model.safetensors (exit $rc): exporting checkpoint.pt"
    python3 "$SRC/tools/lm_session_tools.py" export "$run" >> "$run/session.log" 2>&1 && rc=0
    tail -1 "$run/session.log"
  fi
  if [ ! -f "$run/model.safetensors" ] && [ "$rc" = 0 ]; then rc=1; fi
  echo "$rc" > "$S/status/$name.rc"
  log "$name: finished (exit $rc)"
}

copy_eval() {  # NAME GPU
  local run=$S/runs/$1
  [ -f "$run/model.safetensors" ] || { log "copy eval $1: no model"; return; }
  CUDA_VISIBLE_DEVICES=$2 timeout -k 10 900 python3 -m heron generate --checkpoint "$run/model.safetensors" --copy-eval \
    --copy-trials "$COPY_TRIALS" --device "$DEVICE" --copy-json "$S/results/copy/copy-$1.json" \
    > "$S/logs/copy-$1.log" 2>&1 \
  || { log "copy eval $1 on $DEVICE failed; retrying on the CPU"; tail -5 "$S/logs/copy-$1.log";
       CUDA_VISIBLE_DEVICES= timeout -k 10 900 python3 -m heron generate --checkpoint "$run/model.safetensors" --copy-eval \
         --copy-trials "$COPY_TRIALS" --device cpu --copy-json "$S/results/copy/copy-$1.json" \
         >> "$S/logs/copy-$1.log" 2>&1; }
  log "copy eval $1: $(tail -1 "$S/logs/copy-$1.log")"
}
music_examples() {
  local rosa=$S/runs/music-rosa rwkv7=$S/runs/music-rwkv7
  if [ ! -f "$rosa/model.safetensors" ] || [ ! -f "$rwkv7/model.safetensors" ]; then log "music: a model is missing"; return; fi
  CUDA_VISIBLE_DEVICES=$1 timeout -k 10 1200 python3 "$SRC/examples/music/make_examples.py" --rosa "$rosa" --rwkv7 "$rwkv7" \
    --out "$S/music-examples" --device "$DEVICE" "${MUSIC_EVAL[@]}" > "$S/logs/music-examples.log" 2>&1
  log "music examples: exit $?"; tail -20 "$S/logs/music-examples.log"
}

wait_for() {  # NAME...: until each job has its .rc (at most 45 minutes)
  local name
  for name in "$@"; do
    for _ in $(seq 1 540); do [ -f "$S/status/$name.rc" ] && break; sleep 5; done
  done
}

run_chain() {  # LETTER GPU JOB...
  local letter=$1 gpu=$2; shift 2
  export CUDA_VISIBLE_DEVICES=$gpu
  for name in "$@"; do
    case $name in
      eval:copy-*) wait_for "${name#eval:}"; copy_eval "${name#eval:}" "$gpu" ;;
      eval:music)  wait_for music-rosa music-rwkv7; music_examples "$gpu" ;;
      *) echo running > "$S/status/$name.state"; train_job "$name"; echo done > "$S/status/$name.state" ;;
    esac
  done
  date -u +%s > "$S/status/chain-$letter.done"
}

chain_running() { [ -f "$S/status/chain-$1.pid" ] && [ ! -f "$S/status/chain-$1.done" ] && kill -0 "$(cat "$S/status/chain-$1.pid")" 2>/dev/null; }

show_status() {
  for letter in $(active_letters); do
    if chain_running $letter; then echo "chain $letter: running"; elif [ -f "$S/status/chain-$letter.done" ]; then
      echo "chain $letter: done"; else echo "chain $letter: NOT RUNNING (died?)"; fi
  done
  for f in "$S"/status/*.rc; do [ -f "$f" ] && echo "  $(basename "$f" .rc): exit $(cat "$f")"; done
  for f in "$S"/runs/*/train.csv; do
    [ -f "$f" ] || continue
    echo "  $(basename "$(dirname "$f")"): $(tail -1 "$f" | cut -d, -f1-2,7) (step,loss,elapsed_s)"
  done
}

ensure_packages() {
  "$REPO/tools/ensure_wheels.sh" "$S/site" > /dev/null || return 1
  python3 - <<'PY' || return 1
import importlib, sys
missing = []
for name in ("torch", "numpy", "safetensors", "tqdm", "music21", "matplotlib"):
    try:
        module = importlib.import_module(name)
        print(f"  {name} {getattr(module, '__version__', '?')}")
    except Exception as error:  # noqa: BLE001
        missing.append(f"{name} ({error})")
import heron
print(f"  heron from {heron.__file__}")
if missing:
    sys.exit("missing Python packages: " + ", ".join(missing) + " (carry wheels in .whl/)")
PY
}

case $PHASE in
start)
  if [ -d "$S/status" ] && ls "$S"/status/chain-*.pid >/dev/null 2>&1 && { chain_running A || chain_running B || chain_running C; }; then
    echo "jobs of an earlier start still run in $S (status: $SELF status)"; exit 1
  fi
  rm -rf "$S/runs" "$S/status" "$S/logs" "$S/results" "$S/music-examples" "$S/src"
  mkdir -p "$S/runs" "$S/status" "$S/logs" "$S/results" "$SRC" "$OUT"
  # a private copy of the code: the jobs never see edits or re-syncs of the working tree
  (cd "$REPO" && tar --exclude=__pycache__ -cf - heron examples tools) | tar -xf - -C "$SRC"
  cd "$S"  # not the repository: python3 -m / stdin scripts put the working directory first on sys.path
  log "session $S, tiny=$TINY, TRAIN_MIN=$TRAIN_MIN, GPUs A=$GPU_A B=$GPU_B C=$GPU_C"
  [ "$TINY" = 1 ] || nvidia-smi --query-gpu=index,name,memory.used,memory.total --format=csv,noheader
  ensure_packages || exit 1
  log "tokenizing the demo corpus and extracting the tunes (cached for the jobs)"
  python3 - <<'PY' || exit 1
import time
started = time.time()
from heron.data.text import TextSource
for split in ("train", "validation"):
    print(f"  demo {split}: {len(TextSource.demo(split, 512).tokens):,} tokens")
from heron.data.music import make_batch_sources
train, validation = make_batch_sources(512)
print(f"  music: vocabulary {train.vocab_size}  [{time.time() - started:.0f} s]")
PY
  firsts=()
  for letter in $(active_letters); do
    case $letter in A) gpu=$GPU_A;; B) gpu=$GPU_B;; C) gpu=$GPU_C;; esac
    chain_jobs $letter; firsts+=("${JOBS[0]}")
    setsid nohup "$SELF" _chain "$letter" "$gpu" "${JOBS[@]}" > "$S/logs/chain-$letter.log" 2>&1 < /dev/null &
    echo $! > "$S/status/chain-$letter.pid"
    log "chain $letter on GPU $gpu: ${JOBS[*]} (pid $!)"
  done
  # confirm: every chain alive and its first job's probe has logged its model line
  for _ in $(seq 1 $([ "$TINY" = 1 ] && echo 60 || echo 45)); do
    sleep 1
    ready=1
    for name in "${firsts[@]}"; do
      case $name in eval:*) continue;; esac
      grep -q "parameters" "$S/logs/$name-probe.log" 2>/dev/null || ready=0
    done
    [ $ready = 1 ] && break
  done
  sleep 2
  alive=1
  for letter in $(active_letters); do
    chain_running $letter || [ -f "$S/status/chain-$letter.done" ] || alive=0
    echo "--- chain $letter: $(chain_running $letter && echo alive || echo 'NOT RUNNING')"
    head -5 "$S/logs/chain-$letter.log"
  done
  for name in "${firsts[@]}"; do
    echo "--- $name probe log"; head -4 "$S/logs/$name-probe.log" 2>/dev/null
  done
  [ $alive = 1 ] || { echo "A CHAIN IS NOT RUNNING"; exit 1; }
  echo "started; next: $SELF collect 500 (again until it exits 0)"
  ;;
_chain)
  cd "$S" || exit 1
  shift; letter=$1; gpu=$2; shift 2
  run_chain "$letter" "$gpu" "$@"
  ;;
status)
  cd "$S" 2>/dev/null; show_status
  ;;
collect)
  cd "$S" || exit 1
  limit=${2:-500}; started=$(date +%s)
  while chain_running A || chain_running B || chain_running C; do
    now=$(date +%s)
    if [ $((now - started)) -ge "$limit" ]; then
      show_status
      if [ "${FORCE:-0}" != 1 ]; then echo "jobs still running after ${limit}s: call collect again (or FORCE=1)"; exit 3; fi
      echo "FORCE=1: evaluating what has finished"; break
    fi
    if [ $(( (now - started) % 120 )) -lt 5 ]; then show_status; fi
    sleep 5
  done
  show_status
  mkdir -p "$OUT" "$S/results/copy"
  device_name=$([ "$TINY" = 1 ] && echo "CPU (tiny smoke mode)" || nvidia-smi --query-gpu=name --format=csv,noheader -i "$GPU_A" | head -1)
  python3 "$SRC/tools/lm_session_tools.py" report --out "$S/results/copy" --device "$device_name" \
    "pure ROSA LM=$S/runs/copy-rosalm,$S/results/copy/copy-copy-rosalm.json" \
    "RWKV-8 + ROSA=$S/runs/copy-rwkv8,$S/results/copy/copy-copy-rwkv8.json" \
    "RWKV-7 only=$S/runs/copy-rwkv7,$S/results/copy/copy-copy-rwkv7.json" > "$S/logs/copy-report.log" 2>&1
  cat "$S/logs/copy-report.log"
  # pack: at most 8 files of <= 16 MiB come back
  rm -f "$OUT"/copy-lm.tar.gz* "$OUT"/music-examples.tar.gz* "$OUT"/session-logs.tar.gz* "$OUT"/summary.md
  tar -czf "$OUT/copy-lm.tar.gz" -C "$S/results" copy
  [ -d "$S/music-examples" ] && tar -czf "$OUT/music-examples.tar.gz" -C "$S/music-examples" .
  (cd "$S" && tar -czf "$OUT/session-logs.tar.gz" logs status \
     $(ls -d runs/*/session.log runs/*/session-plan.json runs/*/train.csv runs/*/eval.csv runs/*/EXPORTED_FROM_CHECKPOINT \
            runs/*/music-eval 2>/dev/null))
  {
    echo "# GPU LM session ($(date -u '+%Y-%m-%d %H:%M UTC'), $device_name, TRAIN_MIN=$TRAIN_MIN, tiny=$TINY)"; echo
    show_status; echo
    cat "$S/results/copy/results.md" 2>/dev/null; echo
    cat "$S/music-examples/results.md" 2>/dev/null || echo "(no music results: see session-logs.tar.gz logs/music-examples.log)"
    echo; echo "music-examples.tar.gz: extract into examples/music/ (parts: cat music-examples.tar.gz.part-* > music-examples.tar.gz)"
  } > "$OUT/summary.md"
  for f in "$OUT"/*.tar.gz; do
    if [ -f "$f" ] && [ "$(stat -c %s "$f")" -gt $((15 * 1024 * 1024)) ]; then
      split -b 15M -d -a 2 "$f" "$f.part-" && rm "$f"
    fi
  done
  ls -la "$OUT"
  cat "$OUT/summary.md"
  ;;
*)
  sed -n 2,22p "$SELF"; exit 2
  ;;
esac
