"""What the model's bounded tables forget, as a metric and a log line.

The user history and the followers' table keep memory bounded by dropping their least recently
used entries (see their modules). That is by design, but never silent: after each round the
learner adds what was dropped to ``onevec_model_forgotten_total{what}`` and logs it, once when
a table first forgets and then at most once per ``LOG_EVERY_SECONDS``, naming the setting
that raises the bound.
"""

from __future__ import annotations

import logging
import time

from onevec.models.online.trainer import OnlineTrainer
from onevec.monitoring import metrics

__all__ = ["ForgettingReport"]

log = logging.getLogger(__name__)

LOG_EVERY_SECONDS = 300.0

# what -> the setting whose bound drops it
BOUNDS = {
    "user": "ONEVEC_MODEL_HISTORY_USERS",
    "user_item": "ONEVEC_MODEL_HISTORY_ITEMS",
    "follower": "ONEVEC_MODEL_FOLLOWS_ENTRIES",
}


def forgotten_so_far(trainer: OnlineTrainer) -> dict[str, int]:
    """Entries each bounded table of ``trainer`` dropped since it was made."""
    history, follows = trainer.user_history, trainer.item_follows
    return {
        "user": history.forgotten_users,
        "user_item": history.forgotten_items,
        "follower": 0 if follows is None else follows.forgotten,
    }


class ForgettingReport:
    """Exports the growth of :func:`forgotten_so_far` since the last call."""

    def __init__(self, trainer: OnlineTrainer) -> None:
        self.trainer = trainer
        # From zero: what a restored checkpoint's trimming dropped is counted too.
        self.seen = dict.fromkeys(BOUNDS, 0)
        self.unlogged = dict.fromkeys(BOUNDS, 0)
        self._logged_at: float | None = None

    def update(self) -> dict[str, int]:
        """Count what was forgotten since the last call; return it by ``what``."""
        now = forgotten_so_far(self.trainer)
        new = {what: count - self.seen[what] for what, count in now.items()}
        self.seen = now
        for what, count in new.items():
            if count > 0:
                metrics.MODEL_FORGOTTEN.labels(what=what).inc(count)
                self.unlogged[what] += count
        self._log()
        return new

    def _log(self) -> None:
        if not any(self.unlogged.values()):
            return
        clock = time.monotonic()
        if self._logged_at is not None and clock - self._logged_at < LOG_EVERY_SECONDS:
            return
        self._logged_at = clock
        dropped = ", ".join(
            f"{count} {what.replace('_', ' ')} entries (bound: {BOUNDS[what]})"
            for what, count in self.unlogged.items()
            if count
        )
        log.warning("the model's bounded tables forgot %s; onevec_model_forgotten_total counts them", dropped)
        self.unlogged = dict.fromkeys(self.unlogged, 0)
