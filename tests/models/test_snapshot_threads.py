"""An item snapshot read on one thread while training steps write the tables on another (the
learner's ranking thread): every score read is the score of the model at the snapshot.

SYNTHETIC: random item vectors and session vectors; each step moves 400 rows never moved
before, so every step opens the moment where a reader could see a row after it moved but
before its old value was saved."""

from __future__ import annotations

import threading

import torch

from onevec.models.online.config import ModelConfig
from onevec.models.online.item_encoder import ItemEncoder

ITEMS, DIM, SESSIONS, CHUNK = 12_000, 16, 24, 400


def test_a_snapshot_read_beside_steps_sees_the_rows_as_they_were() -> None:
    encoder = ItemEncoder(ModelConfig(dim=DIM, seed=0))
    for item in range(ITEMS):
        encoder.set_attributes(f"i{item}", [f"genre={item % 7}"])
    encoder.register("item", [f"i{item}" for item in range(ITEMS)])
    with torch.no_grad():
        encoder.tables["item"][:ITEMS] = torch.randn(ITEMS, DIM, generator=torch.Generator().manual_seed(1))
    original = encoder.tables["item"].detach()[:ITEMS].clone()
    snapshot = encoder.snapshot()
    sessions = torch.randn(SESSIONS, DIM, generator=torch.Generator().manual_seed(2))
    token_scores = snapshot.token_scores(sessions)
    expected = snapshot.scores(sessions, token_scores, 0, ITEMS).clone()  # nothing moved yet

    order = torch.randperm(ITEMS, generator=torch.Generator().manual_seed(3))
    stepping = threading.Event()
    mismatches: list[int] = []
    reads = 0

    def read() -> None:
        nonlocal reads
        stepping.wait()
        while stepping.is_set():
            for start in range(0, ITEMS, 2_000):
                got = snapshot.scores(sessions, token_scores, start, start + 2_000)
                if not torch.equal(got, expected[:, start : start + 2_000]):
                    mismatches.append(start)
            reads += 1

    reader = threading.Thread(target=read)
    reader.start()
    table = encoder.tables["item"]
    stepping.set()
    try:
        for chunk in order.split(CHUNK):
            rows = chunk.sort().values
            grad = torch.full((len(rows), DIM), 5.0)
            table.grad = torch.sparse_coo_tensor(rows[None, :], grad, table.shape, check_invariants=True)
            encoder.step([("items.item", table)])
            table.grad = None
    finally:
        stepping.clear()
        reader.join()
    assert (encoder.tables["item"].detach()[:ITEMS] != original).any(1).all(), "a row never moved"
    assert reads >= 3, "the reader never overlapped the steps"
    assert mismatches == []
