"""The worker processes the stream sections measure, in the three layouts they compare: one
process with both halves, the split (``Settings.role``) that gives the sessions and the
learner a core and an interpreter each, and the default of ``onevec worker`` without a role
(``SUPERVISED``): the same split as two children of a supervisor, behind its one port."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path

from onevec.streams.settings import Settings
from onevec.streams.supervisor import ROLES
from onevec.streams.worker import WorkerProcess, metric_total

__all__ = ["LAYOUTS", "SUPERVISED", "Workers", "layout_label"]

# The default layout (streams/supervisor.py): one supervisor process whose ingest and learn
# children sit behind its port; /metrics there is both children's, each sample labelled role.
SUPERVISED: tuple[str, ...] = ("supervised",)
LAYOUTS: tuple[tuple[str, ...], ...] = (("all",), ("ingest", "learn"), SUPERVISED)


def layout_label(roles: tuple[str, ...]) -> str:
    """The suffix of a row's measure: none for one worker, the roles for the split, and the
    supervised default's own."""
    if roles == ("all",):
        return ""
    if roles == SUPERVISED:
        return f", supervised default ({' + '.join(ROLES)} children)"
    return f", {' + '.join(roles)} workers"


# A gauge every worker exports, with no labels of its own: on the supervisor's page it is there
# once per child that answered, labelled with the child's role.
CHILD_GAUGE = "onevec_worker_partitions"


class Workers:
    """The worker processes of one layout, on one broker: metrics are summed over them and
    lookups go to the one that runs the learner. The supervised default is one process here
    (the supervisor): its merged /metrics page is summed as it is, since each child's samples
    appear on it once, under that child's role label."""

    def __init__(self, settings: Settings, roles: tuple[str, ...]) -> None:
        self.roles = roles
        self.supervised = roles == SUPERVISED
        if self.supervised:
            self.workers = [WorkerProcess(settings, settings.broker_url, supervised=True)]
        else:
            self.workers = [
                WorkerProcess(settings.model_copy(update={"role": role}), settings.broker_url)
                for role in roles
            ]
        self.learner = self.workers[-1]  # "all", "learn", or the supervisor (lookups go to learn)

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
        """Every worker's samples, summed by name and labels. Supervised: the supervisor's page
        (its children's samples, labelled role), an OSError while a child's samples are missing
        from it (a child down or not answering), as when a worker of the split does not answer,
        so that no total is read short."""
        summed: dict[str, float] = {}
        for worker in self.workers:
            samples = worker.metrics()
            if self.supervised:
                for role in ROLES:
                    if f"{CHILD_GAUGE}{{role={role}}}" not in samples:
                        raise OSError(f"the supervisor's /metrics has no {role} child samples")
            for name, value in samples.items():
                summed[name] = summed.get(name, 0.0) + value
        return summed

    def wait_serving(self, timeout: float) -> None:
        """Until the learner answers /healthz?ready: its store is open (a first start publishes
        every item before that)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.base_url}/healthz?ready", timeout=10):  # noqa: S310
                    return
            except (urllib.error.HTTPError, OSError):
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"the learner did not serve in {timeout:.0f}s; log: {self.log_path}"
                    ) from None
                time.sleep(0.5)

    def tree_rss_mb(self) -> dict[str, float]:
        """Per role: the RSS now of its worker process and every process below it (supervised:
        the supervisor and both children, under "supervised")."""
        return {
            role: sum(_status_mb(pid, "VmRSS") for pid in _tree(_pid(worker)))
            for role, worker in zip(self.roles, self.workers, strict=True)
        }

    def peak_rss_mb(self) -> dict[str, float]:
        """Per role: the peak RSS of its worker process alone (VmHWM; supervised: the
        supervisor's own, its children not included)."""
        return {
            role: _status_mb(_pid(worker), "VmHWM")
            for role, worker in zip(self.roles, self.workers, strict=True)
        }

    def learned(self) -> float:
        """Examples the learner has learned so far."""
        return metric_total(self.metrics(), "onevec_examples_learned_total")

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every worker, then wait for the processes below them (a qdrant-edge child ends
        on its parent's death, a moment later): until then it may still write the folders the
        caller is about to remove."""
        below = [pid for worker in self.workers for pid in _tree(_pid(worker))[1:]]
        for worker in self.workers:
            worker.stop()
        deadline = time.monotonic() + timeout
        while any(_running(pid) for pid in below) and time.monotonic() < deadline:
            time.sleep(0.1)


def _pid(worker: WorkerProcess) -> int:
    """The worker's process id, 0 (no such process) when it is not running."""
    return 0 if worker.proc is None else worker.proc.pid


def _running(pid: int) -> bool:
    """Whether ``pid`` is a process that has not ended (a zombie has)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _tree(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        for children in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                queue.extend(int(child) for child in children.read_text().split())
            except OSError:  # the task ended meanwhile
                continue
    return found


def _status_mb(pid: int, field: str) -> float:
    """A memory line of /proc/PID/status in MB; 0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0
