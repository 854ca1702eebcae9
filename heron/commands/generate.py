"""``heron generate``: continue a prompt with a trained model, or measure its copy ability.

The prompt is prefilled in GPT mode (one pass over all its tokens), then every new token is one
RNN-mode step; with ROSA the model state keeps one online automaton per stream, so a step costs
the same at token 10 and token 10,000. Generation stops at ``--max-tokens`` or at a stop token
(by default end-of-text, id 0).

Examples:
  heron generate --checkpoint runs/text/model.safetensors --prompt "def main(" --max-tokens 200 --stream
  heron generate --checkpoint model.safetensors --prompt "Once" --temperature 0.8 --top-p 0.9 --seed 1
  heron generate --checkpoint model.safetensors --copy-eval          # issue-7 copy protocol
"""

from __future__ import annotations

import argparse
import sys
import time


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="generate text from a checkpoint (or run the copy-ability evaluation)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, help="heron .safetensors file or official checkpoint")
    parser.add_argument("--prompt", default=None, help="prompt text (default: start from end-of-text)")
    parser.add_argument("--prompt-file", default=None, help="read the prompt from this UTF-8 file")
    parser.add_argument("--prompt-ids", default=None,
                        help="the prompt as token ids (\"1 2 3\" or \"1,2,3\"), for models without a text "
                             "vocabulary (task models); the output is printed as ids and no stop token is "
                             "assumed")
    parser.add_argument("--max-tokens", type=int, default=200, help="tokens to generate per sample (default 200)")
    parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default 1.0)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1] (default 1 = off)")
    parser.add_argument("--top-k", type=int, default=0, help="keep the K most likely tokens (default 0 = off)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the sampler (default: random)")
    parser.add_argument("--num-samples", type=int, default=1, help="independent continuations, generated as one batch")
    parser.add_argument("--stream", action="store_true", help="print tokens as they are generated (one sample)")
    parser.add_argument("--tokenizer", choices=["auto", "world", "bytes"], default="auto",
                        help="auto: bytes for a 257-token vocabulary, else world (default auto)")
    parser.add_argument("--stop-token", type=int, action="append", default=None,
                        help="stop at this token id (repeatable; default: end-of-text 0)")
    parser.add_argument("--no-stop", action="store_true", help="ignore stop tokens, always generate --max-tokens")
    parser.add_argument("--no-echo", action="store_true", help="print only the generated text, not the prompt")
    parser.add_argument("--full-recompute", action="store_true",
                        help="baseline: run the whole context through the model for every token")
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--dtype", choices=["float32", "float64", "bfloat16", "float16"], default=None,
                        help="convert the model's floating parameters (default: as stored)")
    parser.add_argument("--timing", action="store_true", help="print prefill/decode speed to stderr")
    copy = parser.add_argument_group("copy-ability evaluation (replaces generation)")
    copy.add_argument("--copy-eval", action="store_true",
                      help="draw --copy-length tokens from the --copy-pool most frequent validation tokens, prompt "
                           "with them plus their first --copy-cue, decode the rest greedily, report the share copied")
    copy.add_argument("--copy-trials", type=int, default=200, help="number of random sequences (default 200)")
    copy.add_argument("--copy-length", type=int, default=64, help="tokens per random sequence (default 64)")
    copy.add_argument("--copy-cue", type=int, default=8, help="tokens repeated as the cue (default 8)")
    copy.add_argument("--copy-pool", type=int, default=None,
                      help="draw from this many most frequent tokens (default 1000, or every distinct token of "
                           "the data when it has fewer, e.g. with a byte-level model)")
    copy.add_argument("--copy-data", nargs="+", default=None,
                      help="text/jsonl/binidx files whose token frequencies define the pool "
                           "(default: the demo corpus validation split)")
    copy.add_argument("--copy-seed", type=int, default=0, help="seed of the draws (default 0)")
    copy.add_argument("--copy-batch-size", type=int, default=50, help="trials decoded together (default 50)")
    copy.add_argument("--copy-json", default=None, metavar="FILE",
                      help="also write the result (accuracy, exact share, per-trial accuracy, settings) as JSON")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.set_defaults(func=run)


def _resolve_tokenizer(name: str, vocab_size: int | None):
    from heron.data.tokenizers import get_tokenizer

    if name == "auto":
        name = "bytes" if vocab_size == 257 else "world"
    if vocab_size is not None and name == "bytes" and vocab_size < 257:
        raise ValueError(f"--tokenizer bytes needs a vocabulary of 257, the model has {vocab_size}")
    if vocab_size is not None and name == "world" and vocab_size < 65530:
        raise ValueError(f"--tokenizer world needs a vocabulary of at least 65530 ids, the model has {vocab_size}; "
                         "pass --tokenizer bytes for a byte-level model")
    return get_tokenizer(name)


def _check_arguments(args) -> None:
    if args.max_tokens < 0:
        raise ValueError(f"--max-tokens must be >= 0, got {args.max_tokens}")
    if args.num_samples < 1:
        raise ValueError(f"--num-samples must be >= 1, got {args.num_samples}")
    if args.stream and args.num_samples != 1:
        raise ValueError("--stream prints one sample: use --num-samples 1")
    if sum(value is not None for value in (args.prompt, args.prompt_file, args.prompt_ids)) > 1:
        raise ValueError("--prompt, --prompt-file, --prompt-ids: pass one of them")
    for name in ("copy_trials", "copy_length", "copy_cue", "copy_pool", "copy_batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for token in args.stop_token or ():
        if token < 0:
            raise ValueError(f"--stop-token: expected a token id >= 0, got {token}")
    if args.copy_json is not None:
        from heron.commands import check_output_path

        check_output_path(args.copy_json, "--copy-json", folder=False)


def _read_prompt_file(name: str) -> str:
    from pathlib import Path

    path = Path(name)
    if not path.exists():
        raise ValueError(f"--prompt-file {name}: no such file")
    if not path.is_file():
        raise ValueError(f"--prompt-file {name}: not a regular file, expected a UTF-8 text file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"--prompt-file {name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ValueError(f"--prompt-file {name}: cannot be read ({exc.strerror or exc})") from None


def _check_stop_tokens(args, vocab_size: int | None) -> None:
    if vocab_size is None or args.no_stop:
        return
    outside = [token for token in args.stop_token or () if token >= vocab_size]
    if outside:
        # a stop token the model can never emit would silently turn every run into --no-stop
        raise ValueError(f"--stop-token {outside[0]}: outside the model's vocabulary [0, {vocab_size})")


def run(args) -> int:
    import torch

    from heron.commands import resolve_device
    from heron.models.loading import load

    _check_arguments(args)
    device = resolve_device(args.device)
    prompt_text = None
    if args.prompt_file is not None and not args.copy_eval:
        prompt_text = _read_prompt_file(args.prompt_file)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    model = load(args.checkpoint, device=device, dtype=dtype).eval()
    vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)
    if args.copy_eval:
        return _run_copy_eval(args, model, vocab_size)
    _check_stop_tokens(args, vocab_size)
    return _run_generation(args, model, vocab_size, prompt_text)


def _parse_ids(text: str) -> list[int]:
    pieces = text.replace(",", " ").split()
    if not pieces:
        raise ValueError("--prompt-ids: expected at least one token id")
    try:
        return [int(piece) for piece in pieces]
    except ValueError:
        raise ValueError(f"--prompt-ids: expected integers separated by spaces or commas, got {text!r}") from None


def _run_id_generation(args, model) -> int:
    from heron.generate import generate

    prompt = _parse_ids(args.prompt_ids)
    stop_tokens = [] if args.no_stop or args.stop_token is None else args.stop_token

    def on_token(row, token):
        print(f"[{token}]" if token in stop_tokens else token, end=" ", flush=True)

    result = generate(model, [prompt] * args.num_samples, args.max_tokens, temperature=args.temperature,
                      top_p=args.top_p, top_k=args.top_k, seed=args.seed, stop_tokens=stop_tokens,
                      on_token=on_token if args.stream else None, incremental=not args.full_recompute)
    if args.stream:
        print()
    else:
        for tokens, reason, stopped_by in zip(result.tokens, result.stop_reasons, result.stopped_by):
            prefix = "" if args.no_echo else " ".join(map(str, prompt)) + " | "
            suffix = f" [{stopped_by}]" if reason == "stop_token" else ""
            print(prefix + " ".join(map(str, tokens)) + suffix)
    return 0


def _run_generation(args, model, vocab_size, prompt_text: str | None = None) -> int:
    from heron.data.tokenizers import END_OF_TEXT, StreamDecoder
    from heron.generate import generate

    if args.prompt_ids is not None:
        return _run_id_generation(args, model)

    tokenizer = _resolve_tokenizer(args.tokenizer, vocab_size)
    if prompt_text is None:
        prompt_text = args.prompt or ""
    prompt = tokenizer.encode(prompt_text) or [END_OF_TEXT]
    stop_tokens = [] if args.no_stop else (args.stop_token if args.stop_token is not None else [END_OF_TEXT])
    out = sys.stdout
    if not args.no_echo:
        out.write(prompt_text)
        out.flush()
    on_token = None
    decoder = None
    if args.stream:
        decoder = StreamDecoder(tokenizer)

        def on_token(row, token):
            if token not in stop_tokens:
                out.write(decoder.feed(token))
                out.flush()

    result = generate(model, [prompt] * args.num_samples, args.max_tokens, temperature=args.temperature,
                      top_p=args.top_p, top_k=args.top_k, seed=args.seed, stop_tokens=stop_tokens,
                      on_token=on_token, incremental=not args.full_recompute)
    if decoder is not None:
        out.write(decoder.flush() + "\n")
    else:
        for index, tokens in enumerate(result.tokens):
            if args.num_samples > 1:
                out.write(f"\n--- sample {index + 1} ---\n" + ("" if args.no_echo else prompt_text))
            out.write(tokenizer.decode(tokens) + "\n")
    out.flush()
    if args.timing:
        generated = result.generated_count
        print(f"prefill {len(prompt)} tokens x {args.num_samples}: {1000 * result.prefill_seconds:.1f} ms; "
              f"decode {generated} tokens: {result.decode_seconds:.3f} s "
              f"({generated / max(result.decode_seconds, 1e-9):.1f} tokens/s)", file=sys.stderr)
    return 0


_DEFAULT_COPY_POOL = 1000


def _copy_pool_size(requested: int | None, tokens, tokenizer_name: str, origin: str) -> int:
    """The pool size to draw from: ``--copy-pool``, or by default the protocol's 1000 capped at the
    distinct tokens the data has (a byte-level model sees fewer than 1000 distinct bytes, and
    the protocol's intent, the most frequent tokens, is then all of them)."""
    import numpy as np

    from heron.data.tokenizers import END_OF_TEXT

    counts = np.bincount(np.asarray(tokens, dtype=np.int64).ravel())
    if END_OF_TEXT < counts.size:
        counts[END_OF_TEXT] = 0  # most_frequent_tokens leaves end-of-text out of the pool
    distinct = int((counts > 0).sum())
    if distinct == 0:
        raise ValueError(f"--copy-data: {origin} holds no {tokenizer_name} tokens other than end-of-text")
    if requested is None:
        if distinct < _DEFAULT_COPY_POOL:
            print(f"note: {origin} has only {distinct} distinct {tokenizer_name} tokens, so the pool is all "
                  f"{distinct} of them (--copy-pool default {_DEFAULT_COPY_POOL})", file=sys.stderr)
        return min(distinct, _DEFAULT_COPY_POOL)
    if requested > distinct:
        raise ValueError(f"--copy-pool {requested}: {origin} has only {distinct} distinct {tokenizer_name} tokens "
                         f"(end-of-text excluded); pass --copy-pool {distinct} or less")
    return requested


def _run_copy_eval(args, model, vocab_size) -> int:
    from heron.data.text import TextSource, most_frequent_tokens
    from heron.generate.copy_eval import copy_eval

    tokenizer = _resolve_tokenizer(args.tokenizer, vocab_size)
    if args.copy_data:
        tokens = TextSource.from_files(args.copy_data, 1, tokenizer=tokenizer).tokens
        origin = ", ".join(args.copy_data)
    else:
        tokens = TextSource.demo("validation", 1, tokenizer=tokenizer).tokens
        origin = "demo corpus validation split"
    pool_size = _copy_pool_size(args.copy_pool, tokens, tokenizer.name, origin)
    pool = most_frequent_tokens(tokens, pool_size)
    started = time.perf_counter()
    result = copy_eval(model, pool, trials=args.copy_trials, length=args.copy_length, cue=args.copy_cue,
                       seed=args.copy_seed, batch_size=args.copy_batch_size, incremental=not args.full_recompute)
    elapsed = time.perf_counter() - started
    print(f"{result.summary()}; pool = {pool_size} most frequent {tokenizer.name} tokens of {origin}, "
          f"seed {args.copy_seed} [{elapsed:.1f} s]")
    if args.copy_json:
        import json
        from pathlib import Path

        record = {"checkpoint": str(args.checkpoint), "token_accuracy": result.token_accuracy,
                  "exact_share": result.exact_share, "trials": result.trials, "length": result.length,
                  "cue": result.cue, "pool": pool_size, "pool_origin": origin, "tokenizer": tokenizer.name,
                  "seed": args.copy_seed, "device": str(next(model.parameters()).device), "seconds": elapsed,
                  "parameters": sum(p.numel() for p in model.parameters()),
                  "tokens_after_first_error": result.tokens_after_first_error(),
                  "per_trial_accuracy": result.per_trial_accuracy,
                  "per_trial_first_error": result.per_trial_first_error}
        path = Path(args.copy_json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1) + "\n")
    return 0
