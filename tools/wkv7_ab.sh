#!/usr/bin/env bash
# A/B timing of the WKV7 kernels on one GPU: the working tree against another commit's, the two
# builds alternated so that both see the same machine (per-kernel timings of one build agree
# within ~0.5% between runs; between machines of one kind they can move by 2-4%).
#
#   tools/wkv7_ab.sh prepare [REF]    # here: REF's heron/ and benchmarks/ (default HEAD) into
#                                     # out/ab_base, an ignored folder the device command carries
#   tools/wkv7_ab.sh run [SWEEP ARGS] # on the GPU (carry out/ab_base): builds both extensions at
#                                     # once, then `benchmarks/wkv7.py --split-sweep` of each tree,
#                                     # twice (default: --chunks 32 at the anchor shapes) -> $OUT/ab.txt
#
# The sweep times the forward that saves states, pass 1 and pass 2 alone. The thirteenth session
# measured the lane-layout struct refactor this way (docs/benchmarks/wkv7.md).
set -uo pipefail
cd "$(dirname "$0")/.."
case ${1:-} in
prepare)
  ref=${2:-HEAD}
  rm -rf out/ab_base && mkdir -p out/ab_base
  git archive "$ref" heron benchmarks | tar -x -C out/ab_base
  echo "out/ab_base: $(git rev-parse --short "$ref") ($(du -sh out/ab_base | cut -f1)); carry it to the device"
  ;;
run)
  shift
  [ -d out/ab_base/heron ] || { echo "out/ab_base is missing: run 'tools/wkv7_ab.sh prepare' here and carry it" >&2; exit 2; }
  out=${OUT:-/tmp/out}; mkdir -p "$out"
  export PYTHONUNBUFFERED=1
  sweep=("$@"); [ ${#sweep[@]} -eq 0 ] && sweep=(--chunks 32)
  nvidia-smi --query-gpu=name --format=csv,noheader
  start=$SECONDS
  (cd out/ab_base && PYTHONPATH=$PWD python3 -c "from heron.ops.wkv7 import cuda; cuda.load()") > "$out/build_base.log" 2>&1 &
  PYTHONPATH=$PWD python3 -c "from heron.ops.wkv7 import cuda; cuda.load()" > "$out/build_tree.log" 2>&1 &
  wait
  echo "both built in $((SECONDS - start)) s"
  for round in 1 2; do
    (cd out/ab_base && PYTHONPATH=$PWD timeout 200 python3 benchmarks/wkv7.py --split-sweep "${sweep[@]}" 2>&1 \
      | sed "s/^/base$round /")
    PYTHONPATH=$PWD timeout 200 python3 benchmarks/wkv7.py --split-sweep "${sweep[@]}" 2>&1 | sed "s/^/tree$round /"
  done | tee "$out/ab.txt"
  echo "A/B done in $((SECONDS - start)) s"
  ;;
*)
  echo "usage: tools/wkv7_ab.sh prepare [REF] | run [SWEEP ARGS]" >&2; exit 2 ;;
esac
