import sys, torch, argparse
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[4] / "benchmarks"))
import rosa_layer_streams as R
args = R.parse_args(["--configs", "rwkv8-rosa1-value", "--device", "cpu", "--batch", "2", "--no-deep-embed", "--train-steps", "8"])
rec = R.record_layer_inputs("rwkv8-rosa1-value", args, torch.device("cpu"))
for layer in (0, 4, 8, 11):
    q = rec[layer][0]  # [B, T, S]
    s = q.permute(0, 2, 1).reshape(-1, q.shape[1]).float()  # streams x T
    ones = s.mean(1)
    runs = (s[:, 1:] != s[:, :-1]).sum(1).float() + 1
    lengths = R.match_lengths(q, q if rec[layer][1] is None else rec[layer][1]).float().reshape(-1, q.shape[1]).mean(1)
    long = lengths > 16
    print(f"layer {layer}: ones fraction mean {ones.mean():.2f}; streams with <5% or >95% ones: {((ones<0.05)|(ones>0.95)).float().mean():.0%}; "
          f"runs per stream median {runs.median():.0f}; among streams with mean match > 16 ({long.float().mean():.0%}): "
          f"ones-fraction extreme {(((ones<0.05)|(ones>0.95)) & long).float().sum() / max(long.sum(),1):.0%}, runs median {runs[long].median() if long.any() else 0:.0f}")
    # periodicity: for long-match streams, smallest shift p in 1..64 with >95% agreement
    if long.any():
        ls = s[long]
        best = []
        for row in ls[:200]:
            found = 0
            for p in range(1, 65):
                if (row[p:] == row[:-p]).float().mean() > 0.95:
                    found = p; break
            best.append(found)
        best = torch.tensor(best)
        print(f"    long-match streams with a near-period <= 64: {(best>0).float().mean():.0%}, period median {best[best>0].median() if (best>0).any() else 0}")
