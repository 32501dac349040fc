"""The worker processes the stream sections measure, in the two layouts they compare: one
process with both halves, and the split (``Settings.role``) that gives the sessions and the
learner a core and an interpreter each."""

from __future__ import annotations

from onevec.streams.settings import Settings
from onevec.streams.worker import WorkerProcess, metric_total

__all__ = ["LAYOUTS", "Workers", "layout_label"]

LAYOUTS: tuple[tuple[str, ...], ...] = (("all",), ("ingest", "learn"))


def layout_label(roles: tuple[str, ...]) -> str:
    """The suffix of a row's measure: none for one worker, the roles for the split."""
    return "" if roles == ("all",) else f", {' + '.join(roles)} workers"


class Workers:
    """The worker processes of one layout, on one broker: metrics are summed over them and
    lookups go to the one that runs the learner."""

    def __init__(self, settings: Settings, roles: tuple[str, ...]) -> None:
        self.workers = [
            WorkerProcess(settings.model_copy(update={"role": role}), settings.broker_url) for role in roles
        ]
        self.learner = self.workers[-1]  # "all" or "learn"

    @property
    def base_url(self) -> str:
        return self.learner.base_url

    @property
    def log_path(self) -> str:
        return ", ".join(str(worker.log_path) for worker in self.workers)

    def start(self, ready_timeout: float) -> None:
        for worker in self.workers:
            worker.start(ready_timeout=ready_timeout)

    def metrics(self) -> dict[str, float]:
        summed: dict[str, float] = {}
        for worker in self.workers:
            for name, value in worker.metrics().items():
                summed[name] = summed.get(name, 0.0) + value
        return summed

    def learned(self) -> float:
        """Examples the learner has learned so far."""
        return metric_total(self.metrics(), "onevec_examples_learned_total")

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
