"""How many of the copy test's tokens a model trained on the demo corpus's training split has ever
seen, and what that costs the copy metric at most.

The copy protocol (heron/generate/copy_eval.py) draws its prompts from the validation split's
1000 most frequent tokens. A token that never occurs in the training split is never a training
target, so a model cannot produce it. A model that then loses the thread, as the measured ones
do, cannot score above the ceiling printed here. The evaluation's own draw is used: 200 trials,
seed 0.

    python tools/copy_pool_coverage.py [--pool 1000] [--trials 200] [--seed 0] [--results COPY_JSON ...]

``--results``: copy evaluations written by ``heron generate --copy-eval --copy-json`` (same pool,
trials and seed): their per-trial accuracy split by whether the trial decodes an unseen token.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from heron.data.text import TextSource, most_frequent_tokens
from heron.generate.copy_eval import copy_prompts, first_true_index


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", type=int, default=1000, help="most frequent validation tokens (the protocol's 1000)")
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0, help="the evaluation's seed (heron generate --copy-eval: 0)")
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--cue", type=int, default=8)
    parser.add_argument("--results", nargs="*", default=[], help="copy-eval JSON files to split by unseen tokens")
    args = parser.parse_args(argv)
    train = TextSource.demo("train", 512, tokenizer="world")
    validation = TextSource.demo("validation", 512, tokenizer="world")
    pool = most_frequent_tokens(validation.tokens, args.pool)
    counts = np.bincount(train.tokens.astype(np.int64), minlength=int(pool.max()) + 1)
    pool_counts = counts[pool.numpy()]
    print(f"demo corpus: {train.tokens.size:,} training tokens; the copy pool: the {args.pool} most frequent "
          f"of {validation.tokens.size:,} validation tokens")
    for below in (1, 5, 20, 100):
        print(f"  pool tokens seen fewer than {below:3d} times in training: {int((pool_counts < below).sum())}")
    _, expected = copy_prompts(pool, args.trials, args.length, args.cue, torch.Generator().manual_seed(args.seed))
    decoded = args.length - args.cue
    for below in (1, 5):
        unseen = torch.from_numpy(counts[expected.numpy()] < below)
        first = first_true_index(unseen)
        print(f"tokens seen fewer than {below} times: {int((first < decoded).sum())} of {args.trials} trials decode one; "
              f"ceiling of the copy metric if the thread is lost there {first.double().mean().item() / decoded:.3f}, "
              f"if only those tokens are missed {1 - unseen.double().mean().item():.4f}")
    # the trials with a token never seen in training, for splitting recorded evaluations
    first_unseen = first_true_index(torch.from_numpy(counts[expected.numpy()] < 1))
    hit = (first_unseen < decoded).numpy()
    for path in args.results:
        record = json.loads(Path(path).read_text())
        accuracy = np.asarray(record["per_trial_accuracy"], dtype=np.float64)
        if (record.get("seed"), len(accuracy), record.get("length"), record.get("cue")) != \
                (args.seed, args.trials, args.length, args.cue):
            raise SystemExit(f"{path}: not the draw above (seed {record.get('seed')}, {len(accuracy)} trials, "
                             f"length {record.get('length')}, cue {record.get('cue')})")
        ceiling = first_unseen[torch.from_numpy(hit)].double().mean().item() / decoded if hit.any() else 1.0
        print(f"{path}: {accuracy.mean():.4f} overall; {int((~hit).sum())} trials without an unseen token "
              f"{accuracy[~hit].mean():.4f} ({np.mean(accuracy[~hit] == 1):.0%} exact); {int(hit.sum())} with one "
              f"{accuracy[hit].mean():.4f} ({np.mean(accuracy[hit] == 1):.0%} exact; copying up to it and no further "
              f"gives {ceiling:.3f})")


if __name__ == "__main__":
    main()
