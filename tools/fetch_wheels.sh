#!/usr/bin/env bash
# Download the pure-Python packages the GPU machines lack (they have no network) into ./.whl, an
# ignored folder that a device command takes along when its `carry` names it; there
# tools/ensure_wheels.sh installs them. Pinned: music21 and its needs (the music benchmarks), and
# fla-core with einops (benchmarks/wkv7.py measures fla's chunk_rwkv7 in the same run when it can
# import it). The GPU hosts run Python 3.12 on x86-64.
#   tools/fetch_wheels.sh && ls .whl
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$repo/.whl"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --dest "$repo/.whl" \
  music21==10.5.1 chardet==7.7.0 jsonpickle==4.1.4 more-itertools==11.2.1 webcolors==25.10.0 \
  fla-core==0.6.0 einops==0.8.2
ls "$repo/.whl"
