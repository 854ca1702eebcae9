#!/usr/bin/env bash
# The whole music experiment of docs/music.md on one GPU: train both models (<= 10 minutes
# each, equal parameter counts, same data, schedule and seed), then evaluate them and write
# results.md, curves.png, samples/ and checkpoint/ into examples/music/.
#   bash examples/music/run.sh            (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
RUNS=${RUNS:-runs}
python3 -m heron train abc --config examples/music/config.toml --out "$RUNS/abc-rosa" --no-progress
python3 -m heron train abc --config examples/music/config_rwkv7.json --out "$RUNS/abc-rwkv7" --no-progress
python3 examples/music/make_examples.py --rosa "$RUNS/abc-rosa" --rwkv7 "$RUNS/abc-rwkv7" --out examples/music
