"""A **synthetic** click stream of any size, for load tests: made-up items, users and clicks, with
Zipf item popularity and the session shape of a real data set.

What is real: each session's length, the gaps between its events, and each user's idle gap
before their next session are drawn (with replacement) from the empirical distributions of a
real stream (:class:`SessionShapes`, MovieLens-100k with 30-minute derived sessions by default,
:mod:`onevec.models.datasets`). What is not: the items a session holds are drawn independently
from a Zipf law over ``items`` ids (``p(rank r) ~ r^-zipf``; which id has which rank is a seeded
permutation), so there is no co-occurrence structure to learn, and users are as many as give the
real stream's events per user. Numbers from it measure load (throughput, freshness, memory at a
catalogue size), never recommendation quality.

It is named like a built-in data set, with its parameters after a colon:
``synthetic-scale:items=1000000,events=10000000,users=0,zipf=1.0,seed=0`` (any may be left
out; ``users=0`` derives them). Events come lazily, in time order, as frames of about
``CHUNK_EVENTS`` rows (:func:`scale_event_chunks`): ten million are never in memory at once, and
the same parameters give the same events whatever reads them. Timestamps are constructed: the
stream starts on 2020-01-01 UTC.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "CHUNK_EVENTS",
    "SCALE_NAME",
    "ScaleSpec",
    "SessionShapes",
    "scale_catalog",
    "scale_event_chunks",
]

SCALE_NAME = "synthetic-scale"
CHUNK_EVENTS = 65_536  # events per frame, about (a frame is one span of stream time)
START = 1_577_836_800.0  # 2020-01-01 UTC: the constructed start of the stream
_PARAMETER = re.compile(r"(\w+)=([^,]+)")


@dataclass(frozen=True)
class SessionShapes:
    """The empirical session shape of a real stream: one value per observation, drawn from
    with replacement."""

    lengths: np.ndarray  # events per session
    in_session_gaps: np.ndarray  # seconds between consecutive events of a session
    between_sessions: np.ndarray  # seconds from a user's session end to their next session start
    events_per_user: float

    @classmethod
    def from_events(cls, events: pd.DataFrame) -> SessionShapes:
        """From normalised events (``user_id``, ``session_id``, ``timestamp``; sessions cut)."""
        ordered = events.sort_values(["user_id", "session_id", "timestamp"], kind="stable")
        session = ordered["session_id"].to_numpy()
        ts = ordered["timestamp"].to_numpy(dtype=np.float64)
        same = session[1:] == session[:-1]
        bounds = ordered.groupby("session_id", sort=False)["timestamp"].agg(["min", "max"])
        owners = ordered.drop_duplicates("session_id").set_index("session_id")["user_id"]
        spans = bounds.assign(user_id=owners).sort_values(["user_id", "min"], kind="stable")
        user = spans["user_id"].to_numpy()
        next_same_user = user[1:] == user[:-1]
        idle = (spans["min"].to_numpy()[1:] - spans["max"].to_numpy()[:-1])[next_same_user]
        if not (idle > 0).any():
            raise ValueError("no user has two sessions apart in time: no idle gap to draw from")
        return cls(
            lengths=ordered.groupby("session_id", sort=False).size().to_numpy(dtype=np.int64),
            in_session_gaps=np.diff(ts)[same],
            # Overlapping sessions of one user (explicit ids) give no idle gap; a zero gap would
            # let a user's sessions pile up at one instant.
            between_sessions=idle[idle > 0],
            events_per_user=len(events) / events["user_id"].nunique(),
        )

    def mean_cycle(self) -> float:
        """Mean seconds from one session's start to its user's next session's start."""
        within = float(np.mean(self.lengths - 1)) * float(np.mean(self.in_session_gaps))
        return within + float(np.mean(self.between_sessions))


@dataclass(frozen=True)
class ScaleSpec:
    """How large a synthetic stream is and how it is drawn."""

    items: int = 1_000_000
    events: int = 10_000_000
    users: int = 0  # 0: as many as give the real stream's events per user
    zipf: float = 1.0
    seed: int = 0

    @classmethod
    def parse(cls, name: str) -> ScaleSpec | None:
        """The spec a data set name gives, None when it is not this stream's name; ValueError
        on a parameter it does not know or a value out of range."""
        family, _, parameters = name.partition(":")
        if family != SCALE_NAME:
            return None
        known = [field.name for field in fields(cls)]
        values: dict[str, Any] = {}
        for part in filter(None, parameters.split(",")):
            match = _PARAMETER.fullmatch(part.strip())
            if match is None or match[1] not in known:
                raise ValueError(f"{part!r} is not one of {', '.join(f'{k}=...' for k in known)}")
            key, value = match[1], match[2]
            try:
                values[key] = float(value) if key == "zipf" else int(float(value))
            except ValueError:
                raise ValueError(f"{part!r}: {key} takes a number") from None
        spec = replace(cls(), **values)
        if spec.items < 1 or spec.events < 0 or spec.users < 0 or spec.zipf <= 0:
            raise ValueError("items must be positive, events and users not negative, zipf positive")
        return spec

    @property
    def name(self) -> str:
        return (
            f"{SCALE_NAME}:items={self.items},events={self.events},users={self.users},"
            f"zipf={self.zipf:g},seed={self.seed}"
        )

    def users_for(self, shapes: SessionShapes) -> int:
        return self.users or max(1, round(self.events / shapes.events_per_user))


def item_id(rows: np.ndarray) -> list[str]:
    return [f"item-{row}" for row in rows.tolist()]


def scale_catalog(spec: ScaleSpec) -> pd.DataFrame:
    """Every item with two synthetic attributes (100 categories, 1,000 brands, by id), so the
    item encoder has shared attribute tokens to learn, as a real catalogue has."""
    rows = np.arange(spec.items)
    return pd.DataFrame(
        {
            "item_id": item_id(rows),
            "category": [f"c{row % 100}" for row in rows.tolist()],
            "brand": [f"b{row % 1000}" for row in rows.tolist()],
        }
    )


def scale_event_chunks(
    spec: ScaleSpec, shapes: SessionShapes, chunk_events: int = CHUNK_EVENTS
) -> Iterator[pd.DataFrame]:
    """The stream's events in time order, about ``chunk_events`` a frame: ``user_id``,
    ``session_id``, ``item_id``, ``event_type`` (click), ``timestamp`` (seconds).

    Every user lives one renewal process: a session (length and in-session gaps drawn from
    ``shapes``), an idle gap (drawn), the next session, ...; each starts part-way through an idle
    gap. Time is cut into spans of
    about ``chunk_events`` expected events: each span's sessions are generated for every user at
    once, and its events are emitted once no later session can start before them (those of a
    session running into the next span wait for it)."""
    rng = np.random.default_rng(spec.seed)
    users = spec.users_for(shapes)
    weights = np.arange(1, spec.items + 1, dtype=np.float64) ** -spec.zipf
    popularity = np.cumsum(weights)
    popularity /= popularity[-1]
    ranked = rng.permutation(spec.items)  # the item of each popularity rank
    cycle = shapes.mean_cycle()
    span = chunk_events * cycle / (users * float(np.mean(shapes.lengths)))
    # Each user is caught at a random moment of an idle gap, drawn in proportion to its length
    # (the gap a random moment falls in is a long one more often): the stream runs at its
    # long-run rate from the start, without a burst of first sessions.
    idle = shapes.between_sessions
    next_start = rng.uniform(0.0, 1.0, users) * rng.choice(idle, size=users, p=idle / idle.sum())
    carried = _Events.empty()
    sessions = emitted = 0
    end = 0.0
    while emitted < spec.events:
        end += span
        drawn = [carried]
        while len(due := np.flatnonzero(next_start < end)):
            events, ends = _sessions(rng, shapes, due, next_start[due], sessions)
            sessions += len(due)
            next_start[due] = ends + rng.choice(shapes.between_sessions, size=len(due))
            drawn.append(events)
        ready, carried = _Events.concat(drawn).split(end)
        ready = ready.first(spec.events - emitted)
        if len(ready.times):
            ranks = np.searchsorted(popularity, rng.random(len(ready.times)), side="right")
            yield ready.frame(ranked[np.minimum(ranks, spec.items - 1)])
            emitted += len(ready.times)


@dataclass(frozen=True)
class _Events:
    """Events as columns (not yet with items), in time order once sorted."""

    times: np.ndarray
    users: np.ndarray
    sessions: np.ndarray

    @classmethod
    def empty(cls) -> _Events:
        return cls(np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))

    @classmethod
    def concat(cls, parts: list[_Events]) -> _Events:
        times = np.concatenate([p.times for p in parts])
        # Stable: events of one session with equal times keep their order.
        order = np.argsort(times, kind="stable")
        return cls(
            times[order],
            np.concatenate([p.users for p in parts])[order],
            np.concatenate([p.sessions for p in parts])[order],
        )

    def split(self, end: float) -> tuple[_Events, _Events]:
        cut = int(np.searchsorted(self.times, end, side="left"))
        return self.first(cut), _Events(self.times[cut:], self.users[cut:], self.sessions[cut:])

    def first(self, n: int) -> _Events:
        return _Events(self.times[:n], self.users[:n], self.sessions[:n])

    def frame(self, items: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "user_id": [f"user-{u}" for u in self.users.tolist()],
                "session_id": [f"session-{s}" for s in self.sessions.tolist()],
                "item_id": item_id(items),
                "event_type": "click",
                "timestamp": START + self.times,
            }
        )


def _sessions(
    rng: np.random.Generator, shapes: SessionShapes, users: np.ndarray, starts: np.ndarray, first_id: int
) -> tuple[_Events, np.ndarray]:
    """One session for each of ``users``, starting at ``starts``: its events and its end time."""
    lengths = rng.choice(shapes.lengths, size=len(users))
    gaps = rng.choice(shapes.in_session_gaps, size=int(lengths.sum()))
    firsts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    gaps[firsts] = 0.0
    owner = np.repeat(np.arange(len(users)), lengths)
    elapsed = np.cumsum(gaps)
    times = starts[owner] + elapsed - elapsed[firsts][owner]
    ends = times[firsts + lengths - 1]
    return _Events(times, users[owner], first_id + owner), ends
