"""Draw the suffix automaton that ROSA builds on a short stream (the figure in docs/concepts.md).

    python tools/draw_automaton.py --stream 0101101 --out docs/figures/rosa_automaton.png

Solid arrows are transitions (labelled with their symbol), dashed arrows suffix links; each
state shows its longest length and the last end position of its strings. Below, the stream,
ROSA's output and, for each position, the matched suffix and where it was found.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from heron.ops.rosa.reference import SuffixAutomatonROSA, rosa_oracle  # noqa: E402


def _layout(automaton: SuffixAutomatonROSA) -> dict[int, tuple[float, float]]:
    # Columns by longest length; states of equal length stacked.
    by_length: dict[int, list[int]] = {}
    for state, length in enumerate(automaton.length):
        by_length.setdefault(length, []).append(state)
    positions = {}
    for length, states in by_length.items():
        for row, state in enumerate(states):
            positions[state] = (length * 1.6, -row * 1.4)
    return positions


def draw(stream: list[int], out: Path) -> None:
    automaton = SuffixAutomatonROSA()
    outputs = [automaton.push(s, s, s) for s in stream]
    assert outputs == rosa_oracle(stream)
    positions = _layout(automaton)
    fig, (ax, table_ax) = plt.subplots(
        2, 1, figsize=(11, 6.5), gridspec_kw={"height_ratios": [3, 1]}
    )
    for state, transitions in enumerate(automaton.next):
        x0, y0 = positions[state]
        for symbol, target in transitions.items():
            x1, y1 = positions[target]
            ax.annotate(
                "", xy=(x1, y1), xytext=(x0, y0),
                arrowprops=dict(arrowstyle="-|>", color="tab:blue", shrinkA=14, shrinkB=14,
                                connectionstyle="arc3,rad=0.15"),
            )
            ax.text((x0 + x1) / 2, (y0 + y1) / 2 + 0.15, str(symbol), color="tab:blue",
                    ha="center", fontsize=10)
        link = automaton.link[state]
        if link >= 0:
            x1, y1 = positions[link]
            ax.annotate(
                "", xy=(x1, y1), xytext=(x0, y0),
                arrowprops=dict(arrowstyle="-|>", color="tab:gray", linestyle="dashed",
                                shrinkA=14, shrinkB=14, connectionstyle="arc3,rad=-0.35"),
            )
    for state, (x, y) in positions.items():
        ax.add_patch(plt.Circle((x, y), 0.42, color="white", ec="black", zorder=3))
        ax.text(x, y + 0.08, f"s{state}", ha="center", va="center", zorder=4, fontsize=10)
        ax.text(x, y - 0.22, f"len {automaton.length[state]}, end {automaton.last_end[state]}",
                ha="center", va="center", zorder=4, fontsize=6)
    xs = [x for x, _ in positions.values()]
    ys = [y for _, y in positions.values()]
    ax.set_xlim(min(xs) - 1.0, max(xs) + 1.0)
    ax.set_ylim(min(ys) - 1.2, max(ys) + 1.2)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(f"Suffix automaton of {''.join(map(str, stream))} "
                 "(solid: transitions, dashed: suffix links)")
    rows = [["t"] + [str(t) for t in range(len(stream))],
            ["x[t]"] + [str(s) for s in stream],
            ["ROSA y[t]"] + [str(y) for y in outputs]]
    table_ax.axis("off")
    table = table_ax.table(cellText=rows, loc="center", cellLoc="center")
    table.scale(1, 1.6)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stream", default="0101101", help="digits, one symbol each")
    parser.add_argument("--out", type=Path, default=Path("docs/figures/rosa_automaton.png"))
    args = parser.parse_args()
    draw([int(c) for c in args.stream], args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
