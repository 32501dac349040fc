"""The item vectors as they were at one moment, scored against session vectors while training
goes on: copy on write, so no copy of the catalogue is made.

An :class:`ItemSnapshot` covers the items and attribute tokens known when it was taken. The
item encoder tells it before a training step moves table rows and before an item's attribute
bag is replaced; it keeps the old values of the rows it may still read (those at or past
``start``, which its reader advances), so a ranking that reads the catalogue slice by slice
over the following rounds sees every item as it was. What it keeps is a few hundred rows per
step, not the tables.

Scores are computed without the item vectors themselves: an item's vector is its id vector plus
the mean of its attribute-token vectors, so its inner product with a session vector ``s`` is
``s . id + mean over its tokens of s . token``: one product with a slice of the id table and one
embedding bag over the sessions' token scores. Building the vectors of a million items took
about 0.5 s; a slice of them is never built. Items with equal attributes and no clicks yet (a
zero id vector) score bit for bit alike wherever they sit, so their ties stay ties.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from onevec.models.online.item_encoder import ItemEncoder

__all__ = ["ItemSnapshot"]


class ItemSnapshot:
    """Rows ``[0, items)`` of the item table and ``[0, tokens)`` of the token table as they were
    when :meth:`ItemEncoder.snapshot` took it; valid until :meth:`release` (or until a state is
    loaded into the encoder, which ends every snapshot: ``valid`` turns False)."""

    def __init__(self, encoder: ItemEncoder) -> None:
        self.encoder = encoder
        self.items = len(encoder.item_vocab)
        self.tokens = len(encoder.vocabularies["token"])
        self.start = 0  # item rows below it are not read any more
        self.valid = True
        self._watching_tokens = True  # until the token scores are taken
        # Per watched table, the old values of the rows that moved since, and per row where
        # its old value is among them (-1: the row has not moved).
        self._old = {table: torch.zeros(0, encoder.config.dim) for table in ("item", "token")}
        self._slot = {
            "item": torch.full((self.items,), -1, dtype=torch.long),
            "token": torch.full((self.tokens,), -1, dtype=torch.long),
        }
        self._old_bags: dict[int, list[int]] = {}
        self._old_bag_rows = torch.zeros(0, dtype=torch.long)

    # ---- told by the encoder ------------------------------------------------------------

    def before_rows_move(self, table: str, rows: Tensor) -> None:
        """Rows (unique) of ``table`` ("item", "token" or another) are about to change."""
        if table not in self._slot or (table == "token" and not self._watching_tokens):
            return
        slot, old = self._slot[table], self._old[table]
        low = self.start if table == "item" else 0
        rows = rows[(rows >= low) & (rows < len(slot))]
        rows = rows[slot[rows] < 0]
        if not len(rows):
            return
        slot[rows] = torch.arange(len(old), len(old) + len(rows))
        # Indexing copies: the step then writes the table in place.
        self._old[table] = torch.cat([old, self.encoder.tables[table].detach()[rows]])

    def before_bag_changes(self, row: int) -> None:
        """Item ``row``'s attribute tokens are about to be replaced."""
        if self.start <= row < self.items and row not in self._old_bags:
            self._old_bags[row] = self.encoder.tokens_of(row)
            self._old_bag_rows = torch.cat([self._old_bag_rows, torch.tensor([row])])

    def invalidate(self) -> None:
        self.valid = False

    def release(self) -> None:
        """Stop keeping old rows (the reader is done)."""
        self.encoder.release_snapshot(self)

    # ---- read ---------------------------------------------------------------------------

    @torch.no_grad()
    def token_scores(self, sessions: Tensor) -> Tensor:
        """(tokens, n) inner products of the token vectors with ``sessions`` (n, dim), what
        :meth:`scores` reads; token rows stop being watched once these are taken."""
        table = self.encoder.tables["token"].detach()[: self.tokens]
        scores = sessions @ table.T
        moved = torch.nonzero(self._slot["token"] >= 0).flatten()
        scores[:, moved] = sessions @ self._old["token"][self._slot["token"][moved]].T
        self._watching_tokens = False
        self._old["token"] = self._old["token"][:0]
        return scores.T.contiguous()

    def scores(self, sessions: Tensor, token_scores: Tensor, start: int, stop: int) -> Tensor:
        """(n, stop - start) scores of ``sessions`` against item rows ``[start, stop)``."""
        return self._scores(sessions, token_scores, torch.arange(start, stop), slice(start, stop))

    def scores_at(self, sessions: Tensor, token_scores: Tensor, rows: Tensor) -> Tensor:
        """(n, len(rows)) scores of ``sessions`` against the item ``rows``, computed as
        :meth:`scores` computes them."""
        return self._scores(sessions, token_scores, rows, rows)

    @torch.no_grad()
    def _scores(self, sessions: Tensor, token_scores: Tensor, rows: Tensor, where: slice | Tensor) -> Tensor:
        # Under the encoder's lock, so a step on another thread cannot move a row between
        # reading it and reading whether its old value was saved; the copies are then read freely.
        with self.encoder.lock:
            ids = self.encoder.tables["item"].detach()[where]
            if isinstance(where, slice):  # a view of the live table; rows indexed are a copy
                ids = ids.clone()
            slot = self._slot["item"][rows]
            moved = slot >= 0
            if moved.any():
                ids[moved] = self._old["item"][slot[moved]]
            changed = torch.isin(rows, self._old_bag_rows)
            flat, offsets = self.encoder.bags(rows, empty=changed)
            old = [self._old_bags[row] for row in rows[changed].tolist()]
        # bag + s . id: a zero id vector adds exactly nothing, so an item's score is then its
        # bag's score, the same bits wherever the item sits. Items x sessions, then transposed:
        # the bag scores come that way, and a transposed bias made the product ~1.7x slower.
        bag_scores = self._bag_scores(token_scores, flat, offsets, changed, old)
        return torch.addmm(bag_scores, ids, sessions.T).T

    @staticmethod
    def _bag_scores(
        token_scores: Tensor, flat: Tensor, offsets: Tensor, changed: Tensor, old: list[list[int]]
    ) -> Tensor:
        """(rows, n): the mean token score of each row's attribute bag as it was (``flat``,
        ``offsets``: the bags now, empty where ``changed``; ``old``: the changed rows' bags)."""
        scores = F.embedding_bag(flat, token_scores, offsets, mode="mean")
        if changed.any():
            sizes = torch.tensor([len(bag) for bag in old])
            scores[changed] = F.embedding_bag(
                torch.tensor([token for bag in old for token in bag], dtype=torch.long),
                token_scores,
                sizes.cumsum(0) - sizes,
                mode="mean",
            )
        return scores
