"""Audit helper: each image's few most similar partners, kept as pairs stream in.

In a crowd of look-alikes (plain trousers) every image passes a search's gate with thousands of
others, but a true copy is among its few most similar: the searches keep a k-nearest-neighbour
graph instead of every gated pair.
"""

from __future__ import annotations

import numpy as np


class Nearest:
    """Each row's `limit` best partners so far (scores and positions, [N, limit] each): 128 MB
    at a million rows and 16 partners, instead of every gated pair."""

    def __init__(self, count: int, limit: int) -> None:
        self.scores = np.full((count, limit), -np.inf, np.float32)
        # int32 while the positions fit (they do below 2^31 rows): half the memory of int64
        self.partners = np.full((count, limit), -1, np.int32 if count < 2**31 else np.int64)
        self.floor = np.full(count, -np.inf, np.float32)  # each row's worst kept score

    def contenders(self, rows: np.ndarray, columns: np.ndarray,
                   scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The pairs `add` would not drop at once (better than either image's worst kept
        partner): in a crowd of look-alikes most gated pairs lose, before any other test."""
        chosen = self.contending(rows, columns, scores)
        return rows[chosen], columns[chosen], scores[chosen]

    def contending(self, rows: np.ndarray, columns: np.ndarray,
                   scores: np.ndarray) -> np.ndarray:
        """bool [P]: `contenders`' mask. The worst kept scores only rise, so a pair that loses
        now loses at any later moment too: callers may test early, from any thread."""
        return (scores > self.floor[rows]) | (scores > self.floor[columns])

    def add(self, rows: np.ndarray, columns: np.ndarray, scores: np.ndarray) -> None:
        """Offer the pairs to both of their images."""
        owners = np.concatenate([rows, columns])
        partners = np.concatenate([columns, rows])
        scores = np.concatenate([scores, scores]).astype(np.float32)
        better = scores > self.floor[owners]  # most offers lose at once once rows fill up
        owners, partners, scores = owners[better], partners[better], scores[better]
        if not len(owners):
            return
        order = np.lexsort((-scores, owners))  # by owner, best first
        owners, partners, scores = owners[order], partners[order], scores[order]
        limit = self.scores.shape[1]
        starts = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]])
        rank = np.arange(len(owners)) - np.repeat(starts, np.diff(np.r_[starts, len(owners)]))
        unique = owners[starts]
        top = rank < limit
        owners, partners, scores, rank = owners[top], partners[top], scores[top], rank[top]
        slot = np.searchsorted(unique, owners)
        offered_scores = np.full((len(unique), limit), -np.inf, np.float32)
        offered_partners = np.full((len(unique), limit), -1, self.partners.dtype)
        offered_scores[slot, rank] = scores
        offered_partners[slot, rank] = partners
        merged_scores = np.concatenate([self.scores[unique], offered_scores], axis=1)
        merged_partners = np.concatenate([self.partners[unique], offered_partners], axis=1)
        best = np.argpartition(-merged_scores, limit - 1, axis=1)[:, :limit]
        self.scores[unique] = np.take_along_axis(merged_scores, best, axis=1)
        self.partners[unique] = np.take_along_axis(merged_partners, best, axis=1)
        self.floor[unique] = self.scores[unique].min(axis=1)

    def pairs(self, rows: int = 1 << 16) -> tuple[np.ndarray, np.ndarray]:
        """Every kept (row, partner) pair once, as (first, second) with first < second: the
        pairs of `rows` rows at a time reduced to one int64 key each (a million rows' owners
        and partners as int64 arrays took ~0.5 GB at once)."""
        count = len(self.partners)
        keys = [np.zeros(0, np.int64)]
        for start in range(0, count, rows):
            partners = self.partners[start:start + rows]
            valid = partners >= 0
            owners = np.broadcast_to(np.arange(start, start + len(partners))[:, None],
                                     partners.shape)[valid]
            found = partners[valid].astype(np.int64)
            keys.append(np.minimum(owners, found) * count + np.maximum(owners, found))
        unique = np.unique(np.concatenate(keys))
        return unique // max(count, 1), unique % max(count, 1)


def unique_pairs(firsts: np.ndarray, seconds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (first, second) pairs of non-negative ints, sorted: (int64 [P], int64 [P]).

    One int64 key per pair, since np.unique(axis=0) sorts rows 6x slower."""
    firsts, seconds = np.asarray(firsts, np.int64), np.asarray(seconds, np.int64)
    base = int(seconds.max()) + 1 if len(seconds) else 1
    keys = np.unique(firsts * base + seconds)
    return keys // base, keys % base
