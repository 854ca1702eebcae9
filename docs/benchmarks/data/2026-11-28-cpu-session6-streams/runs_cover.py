import sys, torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[4] / "benchmarks"))
import rosa_layer_streams as R
args = R.parse_args(["--configs", "rwkv8-rosa1-value", "--device", "cpu", "--batch", "2", "--no-deep-embed", "--train-steps", "8"])
rec = R.record_layer_inputs("rwkv8-rosa1-value", args, torch.device("cpu"))
for layer in (2, 4, 6, 8, 10, 11):
    q = rec[layer][0]
    s = q.permute(0, 2, 1).reshape(-1, q.shape[1])
    runs = (s[:, 1:] != s[:, :-1]).sum(1) + 1
    lengths = R.match_lengths(q, q if rec[layer][1] is None else rec[layer][1]).float().reshape(-1, q.shape[1]).mean(1)
    long = lengths > 16
    cov = [((runs <= c) & long).sum().item() / max(long.sum().item(), 1) for c in (32, 64, 128)]
    print(f"layer {layer}: {long.float().mean():.0%} of streams average > 16; of those, runs <= 32 / 64 / 128: "
          + " / ".join(f"{c:.0%}" for c in cov), flush=True)
