"""Similar-items quality on constructed (SYNTHETIC) streams whose co-occurrences are known:
ten pairs (a_i, b_i) that are clicked together before and after the cut, and a hub h,
clicked most often, that shares sessions with the a's before the cut only."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from onevec.models.evaluation.similar_items import COOCCURRENCE, POPULARITY, RANDOM, measure_similar_items

PAIRS = 10


def stream(shift: int = 0) -> tuple[pd.DataFrame, int]:
    """Before the cut, per i: 5 sessions [a_i, b_i], 2 sessions [a_i, h]; h also alone in 6
    sessions. After the cut, per i: 2 sessions [a_i, b_(i + shift)]."""
    sessions: list[list[str]] = []
    for i in range(PAIRS):
        sessions += [[f"a{i}", f"b{i}"]] * 5 + [[f"a{i}", "h"]] * 2
    sessions += [["h"]] * 6
    history = sum(len(s) for s in sessions)
    for i in range(PAIRS):
        sessions += [[f"a{i}", f"b{(i + shift) % PAIRS}"]] * 2
    rows = [(f"s{n}", item) for n, session in enumerate(sessions) for item in session]
    events = pd.DataFrame(rows, columns=["session_id", "item_id"])
    events["timestamp"] = np.arange(len(events), dtype=np.float64)
    return events, history


ITEMS = [*(f"a{i}" for i in range(PAIRS)), *(f"b{i}" for i in range(PAIRS)), "h"]


def vectors(paired: bool, seed: int = 0) -> np.ndarray:
    """One random direction per pair (a_i and b_i share it) and one for h; or every item its own."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(len(ITEMS), 32))
    if paired:
        directions[PAIRS : 2 * PAIRS] = directions[:PAIRS] + 0.01 * rng.normal(size=(PAIRS, 32))
    return directions


def test_known_precision_and_popularity_percentiles() -> None:
    events, history = stream()
    result = measure_similar_items(
        events, history, ITEMS, {"paired": vectors(True), "unrelated": vectors(False)}, k=1, min_clicks=5
    )
    # Clicks before the cut: a_i 7, b_i 5, h 26. h never co-occurs after the cut: not scored.
    assert (result.candidates, result.scored) == (21, 20)
    # Popularity percentiles (average ranks among 21): the b's 22.5, the a's 72.5, h 100.
    assert result.row("paired").precision == 1.0
    assert result.row("paired").popularity_percentile == pytest.approx((22.5 + 72.5) / 2)
    assert result.row(COOCCURRENCE).precision == 1.0  # 5 shared sessions beat 2 with h
    assert result.row(POPULARITY).precision == 0.0  # h, for every item
    assert result.row(POPULARITY).popularity_percentile == 100.0
    assert result.row(RANDOM).precision == pytest.approx(1 / 20)  # one true partner among 20 others
    assert result.row("unrelated").precision < 0.5


def test_references_read_only_the_past_and_truth_only_the_future() -> None:
    """After the cut a_i goes with b_(i+1), no longer with b_i: what was learned before the
    cut (the counts, vectors pairing a_i with b_i) scores nothing; vectors that pair a_i with
    b_(i+1) score everything."""
    events, history = stream(shift=1)
    shifted = vectors(True)
    shifted[PAIRS : 2 * PAIRS] = np.roll(shifted[:PAIRS], 1, axis=0)  # b_(i+1) along a_i
    sources = {"paired before": vectors(True), "paired after": shifted}
    result = measure_similar_items(events, history, ITEMS, sources, k=1, min_clicks=5)
    assert result.row(COOCCURRENCE).precision == 0.0
    assert result.row("paired before").precision == 0.0
    assert result.row("paired after").precision == 1.0


def test_k_neighbours_fill_with_popularity_when_counts_run_out() -> None:
    events, history = stream()
    result = measure_similar_items(events, history, ITEMS, {"paired": vectors(True)}, k=2, min_clicks=5)
    # a_i: b_i (5 sessions) then h (2); b_i: a_i (5) then, co-occurring with nothing else, the
    # most clicked: h. Only the partner is true: precision 1/2 for every scored item.
    assert result.row(COOCCURRENCE).precision == 0.5
    assert result.row(POPULARITY).precision == pytest.approx(
        # a_i: [h, a_j] (a's are the next most clicked), neither true; b_i: [h, a_0], true for b_0
        1 / (2 * 20)
    )


def test_min_clicks_selects_the_scored_items() -> None:
    events, history = stream()
    result = measure_similar_items(events, history, ITEMS, {"paired": vectors(True)}, k=1, min_clicks=6)
    assert result.scored == PAIRS  # only the a's have 7 clicks before the cut


def test_the_window_bounds_a_co_occurrence() -> None:
    """In sessions [x, f1, f2, f3, f4, y], x and y are five clicks apart: they co-occur with
    window 5, not with window 4. Vectors make x and y each other's nearest neighbour."""
    items = ["x", "f1", "f2", "f3", "f4", "y"]
    rows = [(f"s{n}", item) for n in range(6) for item in items]
    events = pd.DataFrame(rows, columns=["session_id", "item_id"])
    events["timestamp"] = np.arange(len(events), dtype=np.float64)
    unit = np.eye(6)
    unit[5] = unit[0]
    history = 3 * len(items)
    wide = measure_similar_items(events, history, items, {"v": unit}, k=1, min_clicks=1, window=5)
    narrow = measure_similar_items(events, history, items, {"v": unit}, k=1, min_clicks=1, window=4)
    # Window 5: every item co-occurs with every other. Window 4: x and y miss each other, and
    # each f co-occurs with all five others whatever its (tied) neighbour.
    assert wide.row("v").precision == 1.0
    assert narrow.row("v").precision == pytest.approx(4 / 6)
