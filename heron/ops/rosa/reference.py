"""Pure-Python ROSA: the brute-force oracle and the plain online suffix automaton.

``rosa_oracle`` / ``rosa_qkv_oracle`` are written straight from spec/ROSA.md §1–2 (cubic time,
tiny inputs only). ``SuffixAutomatonROSA`` is the structure of the official reference (dict
transitions, suffix links, last-end-position update along the suffix-link chain): correct, but
quadratic on constant or periodic streams. It is the baseline the fast paths are measured
against and the oracle validates it. ``rosa_qkv_grouping`` is the level-by-level grouping
algorithm of the CUDA kernel ``csrc/rosa_grouping_cuda.cu``, written plainly so that the oracle can
check the algorithm itself on the CPU. ``rosa_runs`` answers token ROSA from the stream's runs of
equal symbols in O(T R + R^2) for R runs: the algorithm planned for the streams that defeat the
grouping kernel (nearly constant channels, docs/benchmarks/rosa.md); not yet a kernel.
"""

from __future__ import annotations

from typing import Sequence


def rosa_qkv_oracle(q: Sequence[int], k: Sequence[int], v: Sequence[int]) -> list[int]:
    """Brute force QKV ROSA on one stream: O(T^3)."""
    length = len(q)
    if not (len(k) == len(v) == length):
        raise ValueError("q, k and v must have the same length")
    out = [-1] * length
    for i in range(length):
        best_len, best_end = 0, -1
        for j in range(i):  # key end positions strictly before i
            match = 0
            while match <= j and q[i - match] == k[j - match]:
                match += 1
            if match > 0 and match >= best_len:  # ties: the later j wins
                best_len, best_end = match, j
        if best_len > 0:
            out[i] = v[best_end + 1]
    return out


def rosa_oracle(x: Sequence[int]) -> list[int]:
    """Brute force token ROSA on one stream (QKV ROSA with q = k = v = x)."""
    return rosa_qkv_oracle(x, x, x)


class SuffixAutomatonROSA:
    """Online QKV ROSA on one stream with a suffix automaton of the keys.

    ``push(q, k, v)`` returns the output for the new position: the query ``q`` is matched against
    the keys seen so far, then ``k`` (and ``v``) are appended. The match keeps its state across
    pushes (matching statistics), and each state stores the last end position of its strings,
    updated along the suffix-link chain (the official structure; quadratic on periodic streams).
    """

    def __init__(self) -> None:
        self.next: list[dict[int, int]] = [{}]
        self.link: list[int] = [-1]
        self.length: list[int] = [0]
        self.last_end: list[int] = [-1]
        self.last = 0
        self.keys: list[int] = []
        self.values: list[int] = []
        self.match_state = 0
        self.match_len = 0

    def _new_state(self, length: int, link: int, transitions: dict[int, int], last_end: int) -> int:
        self.next.append(dict(transitions))
        self.link.append(link)
        self.length.append(length)
        self.last_end.append(last_end)
        return len(self.length) - 1

    def _extend(self, symbol: int) -> None:
        position = len(self.keys) - 1
        cur = self._new_state(self.length[self.last] + 1, -1, {}, position)
        p = self.last
        while p != -1 and symbol not in self.next[p]:
            self.next[p][symbol] = cur
            p = self.link[p]
        if p == -1:
            self.link[cur] = 0
        else:
            q = self.next[p][symbol]
            if self.length[p] + 1 == self.length[q]:
                self.link[cur] = q
            else:
                clone = self._new_state(
                    self.length[p] + 1, self.link[q], self.next[q], self.last_end[q]
                )
                while p != -1 and self.next[p].get(symbol) == q:
                    self.next[p][symbol] = clone
                    p = self.link[p]
                self.link[q] = clone
                self.link[cur] = clone
                # The matcher may sit in the state that was just split: move it to the part
                # that holds strings of its length.
                if self.match_state == q and self.match_len <= self.length[clone]:
                    self.match_state = clone
        self.last = cur
        # Every suffix of the keys now ends at `position`: the official last-end update.
        state = self.link[cur]
        while state > 0:
            self.last_end[state] = position
            state = self.link[state]

    def push(self, q: int, k: int, v: int) -> int:
        state, length = self.match_state, self.match_len
        while state != 0 and q not in self.next[state]:
            state = self.link[state]
            length = min(length, self.length[state])
        if q in self.next[state]:
            state = self.next[state][q]
            length += 1
        else:
            state, length = 0, 0
        self.match_state, self.match_len = state, length
        # v[i] is visible to the output at i (the match may end at j = i - 1).
        self.values.append(v)
        out = self.values[self.last_end[state] + 1] if length > 0 else -1
        self.keys.append(k)
        self._extend(k)
        return out


def rosa_qkv_automaton(q: Sequence[int], k: Sequence[int], v: Sequence[int]) -> list[int]:
    """QKV ROSA on one stream through :class:`SuffixAutomatonROSA`."""
    sam = SuffixAutomatonROSA()
    return [sam.push(int(a), int(b), int(c)) for a, b, c in zip(q, k, v)]


def rosa_automaton(x: Sequence[int]) -> list[int]:
    """Token ROSA on one stream through :class:`SuffixAutomatonROSA`."""
    return rosa_qkv_automaton(x, x, x)


def rosa_qkv_grouping(q: Sequence[int], k: Sequence[int], v: Sequence[int]) -> list[int]:
    """QKV ROSA on one stream by refining groups of equal suffixes one symbol at a time.

    Every query position ``i`` and every key position ``j`` is an element; they start in one
    group ordered by time (query ``i`` before key ``i``, after key ``i - 1``). Level ``d`` splits
    each group by the symbol ``d`` steps back (``q[i - d]`` for a query, ``k[j - d]`` for a key),
    so after level ``d`` a group holds the elements whose last ``d + 1`` symbols agree, still in
    time order. A query with a key before it in its group has a match of length ``d + 1``, and the
    latest such key is the nearest one before it. The answer of the deepest level at which a query
    still matches is the spec's (longest match, then latest end). Elements that run out of history
    (``i - d < 0``) and groups without a matching query cannot match at any deeper level and are
    dropped, so the work is the sum of the surviving group sizes over the levels: about
    ``T log T`` on random streams, quadratic on constant or periodic ones (where the GPU kernel
    hands the stream to the automaton after a work budget).
    """
    length = len(q)
    if not (len(k) == len(v) == length):
        raise ValueError("q, k and v must have the same length")
    latest_key = [-1] * length
    groups = [[(time, is_key) for time in range(length) for is_key in (False, True)]]
    depth = 0
    while groups:
        refined = []
        for group in groups:
            by_symbol: dict[int, list[tuple[int, bool]]] = {}
            for time, is_key in group:
                if time - depth >= 0:
                    symbol = (k if is_key else q)[time - depth]
                    by_symbol.setdefault(symbol, []).append((time, is_key))
            refined.extend(by_symbol.values())
        groups = []
        for group in refined:
            last_key, matched = -1, False
            for time, is_key in group:
                if is_key:
                    last_key = time
                elif last_key >= 0:
                    latest_key[time] = last_key
                    matched = True
            if matched:
                groups.append(group)
        depth += 1
    return [v[j + 1] if j >= 0 else -1 for j in latest_key]


def rosa_grouping(x: Sequence[int]) -> list[int]:
    """Token ROSA on one stream through :func:`rosa_qkv_grouping`."""
    return rosa_qkv_grouping(x, x, x)


def rosa_runs(x: Sequence[int], v: Sequence[int] | None = None) -> list[int]:
    """Token ROSA on one stream from its runs of equal symbols: ``v[j* + 1]`` (``v`` defaults to
    ``x``) for the latest ``j* < i`` ending the longest suffix of ``x[0..i]`` seen before, ``-1``
    when ``x[i]`` is new. O(T R + R^2) for R runs, so linear on nearly constant streams, the
    deep-layer channels on which the grouping kernel's work grows with the match length.

    Position ``i`` lies in run ``k`` (symbol ``s_k``, start ``b_k``, length ``n_k``) at offset
    ``o = i - b_k``. A candidate ``j`` in run ``m`` at offset ``o'`` shares ``min(o, o') + 1``
    symbols with ``i`` when ``s_m = s_k`` and ``o' != o`` (then one side leaves its run while the
    other still reads ``s_k``), and ``o + 1 + E(k - 1, m - 1)`` when ``o' = o``, with ``E(a, b)``
    the backward common length of the prefixes ending with runs ``a`` and ``b``: 0 for unequal
    symbols, the shorter length for unequal lengths, else ``n_a + E(a - 1, b - 1)``. So per
    earlier run ``m`` with ``s_m = s_k`` only three candidates matter: ``b_m + o`` (if
    ``n_m > o``), the run's end ``b_m + n_m - 1`` (length ``min(n_m, o + 1)``), and in the own run
    ``i - 1`` (length ``o``); the longest wins, then the latest.
    """
    length = len(x)
    values = x if v is None else v
    if len(values) != length:
        raise ValueError("x and v must have the same length")
    starts: list[int] = []
    run_of: list[int] = []
    for time in range(length):
        if time == 0 or x[time] != x[time - 1]:
            starts.append(time)
        run_of.append(len(starts) - 1)
    runs = len(starts)
    ends = starts[1:] + [length]
    sizes = [end - start for start, end in zip(starts, ends)]
    symbols = [x[start] for start in starts]
    # common[a + 1][b + 1] = E(a, b); row and column 0 stand for "before the stream" (E = 0)
    common = [[0] * (runs + 1) for _ in range(runs + 1)]
    for a in range(runs):
        for b in range(runs):
            if symbols[a] != symbols[b]:
                continue
            if sizes[a] != sizes[b]:
                common[a + 1][b + 1] = min(sizes[a], sizes[b])
            else:
                common[a + 1][b + 1] = sizes[a] + common[a][b]
    out = [-1] * length
    for i in range(length):
        run = run_of[i]
        offset = i - starts[run]
        best_length, best_end = 0, -1

        def consider(match: int, end: int) -> None:
            nonlocal best_length, best_end
            if match > best_length or (match == best_length and match > 0 and end > best_end):
                best_length, best_end = match, end

        if offset >= 1:
            consider(offset, i - 1)
        for other in range(run - 1):  # adjacent runs differ in symbol
            if symbols[other] != symbols[run]:
                continue
            if sizes[other] > offset:
                consider(offset + 1 + common[run][other], starts[other] + offset)
            consider(min(sizes[other], offset + 1), starts[other] + sizes[other] - 1)
        if best_length > 0:
            out[i] = values[best_end + 1]
    return out
