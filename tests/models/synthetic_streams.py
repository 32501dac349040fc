"""SYNTHETIC example streams with a known share of repeats, for the repeat gate's tests.

Users buy baskets (sessions) of items; every next item is, with probability ``repeat``, one the
user had in an earlier basket (not yet in this one), else an item the user never had. Baskets
of all users interleave in time; records are what the session window would emit (prefix = the
basket so far).
"""

from __future__ import annotations

import numpy as np

from onevec.models.clickstream.examples import ExampleRecord

__all__ = ["repeat_stream"]


def repeat_stream(
    repeat: float, users: int = 60, items: int = 300, baskets: int = 8, basket: int = 5, seed: int = 0
) -> list[ExampleRecord]:
    rng = np.random.default_rng(seed)
    sessions: list[tuple[float, str, str, list[str]]] = []
    for user in range(users):
        had: list[str] = []
        for number in range(baskets):
            chosen: list[str] = []
            for _ in range(basket):
                earlier = [item for item in had if item not in chosen]
                if earlier and rng.random() < repeat:
                    item = earlier[int(rng.integers(len(earlier)))]
                else:
                    fresh = [
                        f"i{j}"
                        for j in rng.permutation(items)[:20]
                        if f"i{j}" not in had and f"i{j}" not in chosen
                    ]
                    item = fresh[0]
                chosen.append(item)
            had.extend(item for item in chosen if item not in had)
            sessions.append((number + float(rng.random()), f"u{user}", f"u{user}-s{number}", chosen))
    records: list[ExampleRecord] = []
    for start, user, session, chosen in sorted(sessions):
        for position, item in enumerate(chosen):
            records.append(
                ExampleRecord(
                    event_id=f"{session}-{position}",
                    session_id=session,
                    user_id=user,
                    item_id=item,
                    event_type="view",
                    timestamp=start + position * 1e-3,
                    prefix=chosen[:position],
                    duplicate=False,
                )
            )
    return records
