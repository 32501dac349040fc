"""Per-user lookups: the recommender's modes against a Qdrant store (local mode), and on a real
worker: a MovieLens-100k replay through the real Tansu broker into a worker whose model keeps
the user history and the repeat gate (``ONEVEC_MODEL_REPEAT_GATE``), Qdrant on disk.

``/recommend?user=`` answers from Qdrant: ``mode=again`` only items the user had, ``discover``
none of them, ``mixed`` the gate's merge of both, a live session of the user without its own
items; what it answers is what a Qdrant query over the stored user vector ranks (checked
through the store once the worker has stopped). An unknown user is a 404, and one line from
``onevec recommend``."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import urllib.error
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from qdrant_client import QdrantClient, models

from onevec.models.datasets import load_events
from onevec.models.online.item_follows import ItemFollows
from onevec.models.online.repeat_gate import RepeatGate
from onevec.models.online.user_history import Had, Recalled
from onevec.streams.learner.recommend import Recommender, UnknownSession, UnknownUser
from onevec.streams.learner.users import newest_items
from onevec.streams.qdrant import (
    ItemRecord,
    QdrantStore,
    SessionRecord,
    UserRecord,
    build_item_points,
    build_session_points,
    build_user_points,
    point_id,
)
from onevec.streams.settings import Settings
from onevec.streams.worker import WorkerProcess
from tests.reliability.reconcile import produce, wait_for, wait_metric

EVENTS = 6_000
# Items are swept into Qdrant at every idle tick, so their vectors settle once learning stops.
LEARNER = {"catalog": "movielens-100k", "model_repeat_gate": True, "upsert_refresh_seconds": 0.0}
ONEVEC = Path(sys.executable).parent / "onevec"


def test_a_users_newest_items_put_their_latest_session_last_in_click_order() -> None:
    had = Recalled(["a", "b", "c", "d"], np.array([3.0, 1.0, 2.0, 0.5]), np.array([0, 2, 1, 2]))
    # Earlier sessions by how long ago (b and d two sessions ago, d the weaker), then c, then the
    # latest session as clicked (its items are not repeated from the history).
    assert newest_items(had, ["x", "a"]) == ["d", "b", "c", "x", "a"]


DIM = 4


def behaviour(item_id: str, *values: float) -> ItemRecord:
    return ItemRecord(item_id, {"behaviour": np.array(values, dtype=np.float32)})


def test_modes_rank_through_qdrant_with_the_gate() -> None:
    """Scores are the inner products Qdrant gives, plus the gate's term on the user's own items
    (as of their next session for ?user=, as of the session for their latest one)."""
    items = [
        behaviour(name, score, 0, 0, 0) for name, score in {"a": 5, "b": 4, "c": 3, "d": 2, "e": 1}.items()
    ]
    gate = RepeatGate()
    gate.weights = np.array([3.0, 0.0, 0.0, 0.0, 0.0])  # +3 for an item the user had, whatever its count
    history = {"d": Had(1.0, 0), "e": Had(2.0, 1)}  # as of s2, the user's latest session

    async def scenario() -> None:
        async with QdrantStore(dim=DIM) as store:
            await store.ensure_collections()
            await store.upsert_points("items", build_item_points(items, DIM).all_or_error())
            user = UserRecord("u", np.array([1.0, 0, 0, 0]), "s2", 1.0, Recalled.of(history))
            await store.upsert_points("users", build_user_points([user], DIM).all_or_error())
            session = SessionRecord("s2", np.array([1.0, 0, 0, 0]), "u", 1.0, ["e", "c"])
            await store.upsert_points("sessions", build_session_points([session], DIM).all_or_error())
            recommender = Recommender(store, lambda: gate, decay=0.5)

            mixed = await recommender.for_user("u", 3)
            assert [(r.item_id, r.score) for r in mixed.recommended] == [("a", 5.0), ("d", 5.0), ("b", 4.0)]
            assert [r.had for r in mixed.recommended] == [None, 0.5, None]  # a session later: x 0.5
            again = await recommender.for_user("u", 10, "again")
            assert [(r.item_id, r.score) for r in again.recommended] == [("d", 5.0), ("e", 4.0)]
            discover = await recommender.for_user("u", 10, "discover")
            assert [r.item_id for r in discover.recommended] == ["a", "b", "c"]

            # In the user's latest session: its own items (e, c) are never recommended, and the
            # history is as of it (d's count unchanged).
            live = await recommender.for_session("s2", 10)
            assert [(r.item_id, r.had) for r in live.recommended] == [("a", None), ("d", 1.0), ("b", None)]
            assert live.user_id == "u" and live.items == ["e", "c"]
            with pytest.raises(UnknownUser):
                await recommender.for_user("nobody", 3)
            with pytest.raises(UnknownSession):
                await recommender.for_session("s-none", 3)

    asyncio.run(scenario())


def test_a_sessions_followers_enter_the_ranking_from_beyond_qdrants_top_k() -> None:
    """An item with the lowest inner product that followed the session's last item on the
    stream is read from Qdrant and ranked by the gate's term; in ``again`` mode it is not
    (the user never had it)."""
    items = [behaviour(name, score, 0, 0, 0) for name, score in {"a": 5, "b": 4, "c": 3, "z": -9}.items()]
    gate = RepeatGate()
    gate.weights = np.array([3.0, 0.0, 0.0, 20.0, 0.0])  # +20 x follows_last
    follows = ItemFollows()
    follows.observe(["x"], "z")  # z came right after x once

    async def scenario() -> None:
        async with QdrantStore(dim=DIM) as store:
            await store.ensure_collections()
            await store.upsert_points("items", build_item_points(items, DIM).all_or_error())
            user = UserRecord("u", np.array([1.0, 0, 0, 0]), "s1", 1.0, Recalled.of({"c": Had(1.0, 0)}))
            await store.upsert_points("users", build_user_points([user], DIM).all_or_error())
            session = SessionRecord("s1", np.array([1.0, 0, 0, 0]), "u", 1.0, ["x"])
            await store.upsert_points("sessions", build_session_points([session], DIM).all_or_error())
            recommender = Recommender(store, lambda: gate, decay=1.0, follows=lambda: follows)

            live = await recommender.for_session("s1", 2)
            assert [(r.item_id, r.score) for r in live.recommended] == [("z", 11.0), ("c", 6.0)]
            again = await recommender.for_session("s1", 2, "again")
            assert [r.item_id for r in again.recommended] == ["c"]
            without = Recommender(store, lambda: gate, decay=1.0)  # no table: Qdrant's order
            assert [r.item_id for r in (await without.for_session("s1", 2)).recommended] == ["c", "a"]

    asyncio.run(scenario())


def per_user_stream(count: int) -> pd.DataFrame:
    """MovieLens events without session ids: the stream derives each user's sessions by idle
    gap and names them as ``load_events`` does (kept here to know them)."""
    return load_events("movielens-100k").iloc[:count]


def pick_user(events: pd.DataFrame) -> tuple[str, set[str], str, set[str]]:
    """A user with several sessions and at most 100 items (the history's bound): their id, items,
    latest session and its items."""
    sizes = events.groupby("user_id").agg(items=("item_id", "nunique"), sessions=("session_id", "nunique"))
    fit = sizes[(sizes["sessions"] >= 2) & sizes["items"].between(20, 100)]
    user = str(fit.index[0])
    mine = events[events["user_id"].astype(str) == user]
    latest = str(mine["session_id"].iloc[-1])
    in_latest = set(mine.loc[mine["session_id"] == latest, "item_id"].astype(str))
    return user, set(mine["item_id"].astype(str)), latest, in_latest


def ranked(worker: WorkerProcess, query: str) -> list[dict[str, Any]]:
    answer = worker.get_json(f"/recommend?{query}")
    assert answer is not None, query
    return answer["recommended"]


def ids(rows: list[dict[str, Any]]) -> list[str]:
    return [row["item_id"] for row in rows]


def test_user_lookups_answer_from_qdrant_by_mode(settings: Settings, start_worker) -> None:
    events = per_user_stream(EVENTS)
    user, had, session, in_session = pick_user(events)
    worker = start_worker(**LEARNER)
    produce(settings, events.drop(columns="session_id"))
    wait_metric(worker, "onevec_examples_learned_total", EVENTS)

    # Every item the user had, and none other, once Qdrant holds the user and their items.
    def again_is_all_they_had() -> bool:
        answer = worker.get_json(f"/recommend?user={user}&mode=again&k=1000")
        return answer is not None and set(ids(answer["recommended"])) == had

    wait_for(again_is_all_they_had, "the user's items in Qdrant", 60)
    # Item vectors settle (swept at idle ticks): the same discover ranking twice in a row.
    previous: list[list[str]] = [[]]

    def settled() -> bool:
        now = ids(ranked(worker, f"user={user}&mode=discover&k=20"))
        stable, previous[0] = now == previous[0], now
        return stable

    wait_for(settled, "stable item vectors", 60, every=2.0)

    again = ranked(worker, f"user={user}&mode=again&k=10")
    discover = ranked(worker, f"user={user}&mode=discover&k=20")
    mixed = ranked(worker, f"user={user}&k=20")
    assert len(again) == 10 and set(ids(again)) <= had
    assert all(row["had"] is not None and row["had"] > 0 for row in again)
    assert len(discover) == 20 and not set(ids(discover)) & had
    assert all(row["had"] is None for row in discover)
    # mixed: the top 20 of both rankings, by the same gated scores.
    everything = {
        row["item_id"]: row["score"] for row in [*ranked(worker, f"user={user}&mode=again&k=1000"), *discover]
    }
    assert ids(mixed) == sorted(everything, key=lambda item: -everything[item])[:20]
    assert [row["score"] for row in mixed] == pytest.approx([everything[i] for i in ids(mixed)])
    for row in (*again, *discover, *mixed):
        assert row["attributes"].get("genre")  # the item's payload came with it

    # A live session of the user: never its own items.
    session_again = ids(ranked(worker, f"session={session}&mode=again&k=1000"))
    session_discover = ids(ranked(worker, f"session={session}&mode=discover&k=20"))
    assert session_again and set(session_again) <= had - in_session
    assert len(session_discover) == 20 and not set(session_discover) & (had | in_session)

    # Unknown user: 404 over HTTP, one line and exit status 2 from the command.
    assert worker.get_json("/recommend?user=nobody") is None
    with pytest.raises(urllib.error.HTTPError) as refused:
        worker.get_json(f"/recommend?user={user}&mode=sometimes")
    assert refused.value.code == 400
    done = subprocess.run(
        [ONEVEC, "recommend", "--user", "nobody", "--worker", worker.base_url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and "unknown user 'nobody'" in lines[0], done.stderr
    shown = subprocess.run(
        [ONEVEC, "recommend", "--user", user, "--mode", "again", "--k", "3", "--worker", worker.base_url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0 and ids(again)[0] in shown.stdout, shown.stdout + shown.stderr
    worker.stop()

    # What the worker answered is Qdrant's ranking over the stored user vector: the best items
    # the user never had, asked of Qdrant directly with a point-id filter.
    client = QdrantClient(path=str(settings.qdrant_path))
    try:
        (point,) = client.retrieve("users", [point_id("user", user)], with_payload=True, with_vectors=True)
        assert isinstance(point.vector, dict) and point.payload is not None
        assert set(point.payload["items"]) == had
        never_had = models.Filter(
            must_not=[models.HasIdCondition(has_id=[point_id("item", i) for i in point.payload["items"]])]
        )
        response = client.query_points(
            "items", query=point.vector["user"], using="behaviour", query_filter=never_had, limit=20
        )
        qdrant_discover = [str((p.payload or {})["item_id"]) for p in response.points]
    finally:
        client.close()
    assert qdrant_discover == ids(discover)
