#!/usr/bin/env bash
# Install the carried wheels (./.whl, from tools/fetch_wheels.sh: music21 and its pure-Python
# needs, fla-core and einops, which GPU machines without network lack) into a target folder when
# music21 or fla is missing; print the folder to put on PYTHONPATH. Used by the GPU session scripts.
#   site=$(tools/ensure_wheels.sh /tmp/heron-site) && export PYTHONPATH="$PYTHONPATH:$site"
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
target=${1:?usage: ensure_wheels.sh TARGET_DIR}
mkdir -p "$target"
if ! PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$target" python3 -c "import music21, fla" 2>/dev/null \
   && ls "$repo"/.whl/*.whl > /dev/null 2>&1; then
  echo "installing $(ls "$repo"/.whl | tr '\n' ' ') into $target" >&2
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$target" \
    "$repo"/.whl/*.whl >&2 || exit 1
fi
echo "$target"
