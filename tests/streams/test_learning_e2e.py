"""The live model end to end, on a real broker, a real worker process and Qdrant local mode:
a MovieLens-100k replay becomes item vectors in Qdrant that group genres, recommendations
that beat popularity on a held-out tail, and a checkpoint that survives kill -9."""

from __future__ import annotations

import random
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter

import pandas as pd
import pytest

from onevec.models.catalog import load_attributes
from onevec.models.datasets import load_events
from onevec.streams.kafka.producer import EventProducer
from onevec.streams.kafka.replay import iter_event_dicts
from onevec.streams.kafka.topics import bootstrap_servers
from onevec.streams.worker import WorkerProcess, metric_total
from tests.reliability.reconcile import uncovered_examples, wait_for

TRAIN, TAIL = 18_000, 1_000
LEARNER = {"catalog": "movielens-100k", "checkpoint_interval_seconds": 2.0}


def get(worker: WorkerProcess, path: str) -> dict | None:
    return worker.get_json(path)


def replay(settings, events: pd.DataFrame) -> None:
    with EventProducer(bootstrap_servers(settings), settings.clicks_topic) as producer:
        producer.send_many(iter_event_dicts(events))


def wait_metric(worker: WorkerProcess, name: str, target: float, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while metric_total(worker.metrics(), name) < target:
        assert time.monotonic() < deadline, f"{name} stayed below {target}"
        time.sleep(0.5)


def next_item_pairs(events: pd.DataFrame, start: int, stop: int) -> list[tuple[list[str], str]]:
    """(prefix, next item) for events[start:stop] with a non-empty prefix, sessions as streamed."""
    history: dict[str, list[str]] = {}
    pairs = []
    for position, (session, item) in enumerate(zip(events["session_id"], events["item_id"], strict=True)):
        if position >= stop:
            break
        items = history.setdefault(session, [])
        if position >= start and items:
            pairs.append((items[-50:], item))
        items.append(item)
    return pairs


def live_hit_rate(worker: WorkerProcess, pairs: list[tuple[list[str], str]]) -> float:
    hits = 0
    for prefix, target in pairs:
        query = urllib.parse.urlencode({"items": ",".join(prefix), "k": 20})
        ranked = [r["item_id"] for r in get(worker, f"/recommend?{query}")["recommended"]]
        hits += target in ranked
    return hits / len(pairs)


def popularity_hit_rate(train: pd.DataFrame, pairs: list[tuple[list[str], str]]) -> float:
    ranking = train["item_id"].value_counts().index.tolist()
    hits = 0
    for prefix, target in pairs:
        seen = set(prefix)
        hits += target in [i for i in ranking[: 20 + len(seen)] if i not in seen][:20]
    return hits / len(pairs)


def share_genre(a: dict, b: dict) -> bool:
    return bool(set(a.get("genre", [])) & set(b.get("genre", [])))


@pytest.fixture(scope="module")
def movielens() -> tuple[pd.DataFrame, dict[str, dict]]:
    return load_events("movielens-100k"), load_attributes("movielens-100k")


def test_replay_gives_useful_vectors_in_qdrant(settings, start_worker, movielens) -> None:
    events, attributes = movielens
    train = events.iloc[:TRAIN]
    worker = start_worker(**LEARNER)
    replay(settings, train)
    wait_metric(worker, "onevec_examples_learned_total", TRAIN)

    # Every item seen has its vectors in Qdrant (the sink flushes within its interval).
    seen = sorted(set(train["item_id"]))
    deadline = time.monotonic() + 30
    while missing := [i for i in seen if get(worker, f"/items/{i}") is None]:
        assert time.monotonic() < deadline, f"{len(missing)} seen items have no vector in Qdrant"
        time.sleep(1)
    stored = get(worker, f"/items/{seen[0]}")
    assert {"unified", "behaviour"} <= set(stored["vectors"])
    assert stored["payload"]["event_count"] == int((train["item_id"] == seen[0]).sum())

    # Neighbours of popular movies share a genre far more often than random pairs do.
    rng = random.Random(0)
    random_rate = (
        sum(share_genre(attributes[a], attributes[b]) for a, b in (rng.sample(seen, 2) for _ in range(2000)))
        / 2000
    )
    popular = train["item_id"].value_counts().index[:20]
    neighbours = [
        (item, hit["item_id"]) for item in popular for hit in get(worker, f"/similar/{item}?k=10")["similar"]
    ]
    similar_rate = sum(share_genre(attributes[a], attributes[b]) for a, b in neighbours) / len(neighbours)
    print(f"\nsimilar items share a genre: {similar_rate:.3f}; random pairs: {random_rate:.3f}")
    assert similar_rate > random_rate + 0.1

    # A payload filter narrows the neighbours.
    comedies = get(worker, f"/similar/{popular[0]}?k=10&filter=genre%3DComedy")["similar"]
    assert comedies and all("Comedy" in hit["attributes"]["genre"] for hit in comedies)

    # Held-out tail: live-session recommendations beat popularity.
    pairs = next_item_pairs(events, TRAIN, TRAIN + TAIL)
    live, popularity = live_hit_rate(worker, pairs), popularity_hit_rate(train, pairs)
    print(f"held-out tail ({len(pairs)} next items): live HR@20 {live:.3f}, popularity {popularity:.3f}")
    assert live > popularity

    # Cold start: a catalogue item never clicked has a vector from its attributes alone.
    cold = sorted(set(attributes) - set(events.iloc[: TRAIN + TAIL]["item_id"]), key=int)
    assert cold
    item = get(worker, f"/items/{cold[0]}")
    assert item is not None and item["payload"]["event_count"] == 0
    hits = get(worker, f"/similar/{cold[0]}?k=10")["similar"]
    cold_rate = sum(share_genre(attributes[cold[0]], attributes[h["item_id"]]) for h in hits) / len(hits)
    assert cold_rate > random_rate

    stats = get(worker, "/stats")
    assert stats["sessions"] > 0 and stats["prequential"]["scored"] > 0
    assert stats["prequential"]["sampled"] is False  # 1,682 items, under the item budget: every example
    assert Counter(h["item_id"] for h in hits).most_common(1)[0][1] == 1  # no duplicate points


def test_checkpoint_survives_kill_and_learning_continues(settings, start_worker, movielens) -> None:
    events, _ = movielens
    pairs = next_item_pairs(events, 16_000, 16_000 + TAIL)
    first = start_worker(**LEARNER)
    replay(settings, events.iloc[:8_000])
    wait_metric(first, "onevec_examples_learned_total", 8_000)
    # A checkpoint that covers every examples record (the learner writes one at most
    # checkpoint_interval_seconds after its last round; it may already have).
    wait_for(lambda: uncovered_examples(settings, [settings.data_dir]) == 0, "checkpoint covers all", 60)
    steps_before = get(first, "/stats")["model_steps"]
    hr_before = live_hit_rate(first, pairs)
    first.kill()

    second = start_worker(**LEARNER)
    assert metric_total(second.metrics(), "onevec_checkpoint_restores_total") == 1
    assert get(second, "/stats")["model_steps"] >= steps_before  # not a fresh model
    replay(settings, events.iloc[8_000:16_000])
    wait_metric(second, "onevec_examples_learned_total", 8_000)
    hr_after = live_hit_rate(second, pairs)
    print(
        f"\nheld-out HR@20 after 8k events: {hr_before:.3f}; "
        f"after a kill -9, restore and 8k more: {hr_after:.3f}"
    )
    assert hr_after > hr_before
