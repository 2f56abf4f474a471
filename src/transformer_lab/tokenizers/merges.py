"""Applying learned BPE merges to one word, fast (shared by ``bpe`` and ``bytelevel``)."""

from __future__ import annotations

import heapq
from typing import Mapping, Sequence


def apply_merges(word: str | Sequence[str], ranks: Mapping[tuple[str, str], int]) -> list[str]:
    """Split ``word`` (a string, or a sequence of initial symbols) into tokens by applying merges,
    lowest rank first. Shared by byte-level BPE (GPT-2) and Sennrich BPE (subword-nmt).

    Algorithm: start from one token per symbol; repeatedly take the adjacent pair with the lowest merge
    rank (leftmost on ties) and join it; stop when no adjacent pair has a rank. Equivalent to GPT-2's
    "merge every occurrence of the best pair, then look again", but with a heap of candidate pairs and a
    linked list of tokens it costs O(n log n) instead of O(n^2), which matters for a 1M-character word.

    Heap entries are (rank, position of the left token). An entry goes stale when either token takes
    part in another merge first; it is recognised on pop because the pair now at that position has a
    different rank (symbols only grow, so a position never holds the same pair twice).

    Same result as subword-nmt's "merge all occurrences of the lowest-ranked pair, left to right":
    a pair created by a merge contains the new symbol, so its rank is higher than the merge that
    made it, and every occurrence of the current rank is merged before anything ranked later.
    """
    tokens: list[str | None] = list(word)
    n = len(tokens)
    if n < 2:
        return list(word)
    nxt = list(range(1, n + 1))  # n means "no next token"
    prv = list(range(-1, n - 1))  # -1 means "no previous token"
    heap = []
    for i in range(n - 1):
        rank = ranks.get((word[i], word[i + 1]))
        if rank is not None:
            heap.append((rank, i))
    heapq.heapify(heap)
    while heap:
        rank, i = heapq.heappop(heap)
        j = nxt[i]
        left = tokens[i]
        if left is None or j == n or ranks.get((left, tokens[j])) != rank:
            continue  # stale entry
        merged = left + tokens[j]
        tokens[i], tokens[j] = merged, None
        k = nxt[j]
        nxt[i] = k
        if k < n:
            prv[k] = i
            rank = ranks.get((merged, tokens[k]))
            if rank is not None:
                heapq.heappush(heap, (rank, i))
        p = prv[i]
        if p >= 0:
            rank = ranks.get((tokens[p], merged))
            if rank is not None:
                heapq.heappush(heap, (rank, p))
    return [t for t in tokens if t is not None]
