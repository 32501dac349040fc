"""``onevec chaos``: a soak under faults, reconciled (docs/operations.md, "Chaos soak").

A real data set is replayed, paced over the whole fault schedule, into ingest workers and one
learn worker on an embedded Tansu broker, while, one fault every ``every`` seconds in a seeded
random order:

* a random worker is killed with SIGKILL and started again at once (as a supervisor would);
* every connection to the broker is cut for :data:`CUT_SECONDS`, longer than the group session
  timeout, so the group forgets its members (a TCP proxy between every client and the broker,
  :mod:`onevec.streams.tools.broker_proxy`; the replay waits while it is cut, so the input is
  exactly the data set);
* the learn worker's Qdrant refuses every call for :data:`OUTAGE_SECONDS` (its embedded Qdrant,
  local mode on disk, behind a switch: :mod:`onevec.streams.tools.qdrant_outage`).

A worker that dies on its own is started again and counted as a crash. Then the pipeline is
left to catch up, every worker is stopped, and the input is reconciled against the examples,
the dead letters, and the points and click counts in Qdrant
(:mod:`onevec.streams.tools.reconcile`).
"""

from __future__ import annotations

import logging
import random
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from onevec.deploy.embedded_broker import free_port
from onevec.streams.console import read_events
from onevec.streams.kafka.producer import EventProducer
from onevec.streams.kafka.topics import bootstrap_servers, ensure_topics
from onevec.streams.settings import Settings
from onevec.streams.tools.broker_proxy import TcpProxy, tansu_behind
from onevec.streams.tools.qdrant_outage import worker_command
from onevec.streams.tools.reconcile import (
    MALFORMED,
    EventKey,
    Reconciliation,
    TopicReader,
    example_key,
    flatten,
    input_keys,
    input_records,
    locate_inputs,
    reconcile_qdrant,
    reconcile_topics,
    uncovered_examples,
)
from onevec.streams.worker import WorkerProcess

__all__ = ["CUT_SECONDS", "OUTAGE_SECONDS", "ChaosPlan", "ChaosResult", "report", "run_chaos", "soak"]

CUT_SECONDS = 10.0  # longer than the 6 s group session timeout against Tansu
OUTAGE_SECONDS = 15.0
CHECKPOINT_SECONDS = 2.0  # a learn worker killed every few seconds still leaves checkpoints
SUPERVISE_SECONDS = 0.5  # how often dead workers are looked for
CHUNK_SECONDS = 0.5  # the replay sends its records in chunks of this much time


@dataclass(frozen=True)
class ChaosPlan:
    """What to replay and which faults to inject, one every ``every`` seconds."""

    dataset: str = "movielens-100k"
    events: int = 50_000
    kills: int = 20
    cuts: int = 3
    outages: int = 2
    every: float = 5.0
    ingest_workers: int = 2
    seed: int = 0
    workdir: Path | None = None
    catch_up_seconds: float = 900.0  # after the last fault, for the pipeline to finish

    def schedule(self) -> list[str]:
        faults = ["kill"] * self.kills + ["cut"] * self.cuts + ["outage"] * self.outages
        random.Random(self.seed).shuffle(faults)
        return faults


@dataclass
class Memory:
    """Resident memory of one worker slot (MB): its first process at start, the most any of
    its processes held, its last process at the end."""

    start: float = 0.0
    peak: float = 0.0
    end: float = 0.0


@dataclass
class ChaosResult:
    plan: ChaosPlan
    workdir: Path
    reconciliation: Reconciliation
    kills: Counter[str] = field(default_factory=Counter)  # by worker slot
    cuts: int = 0
    outages: int = 0
    crashes: Counter[str] = field(default_factory=Counter)  # deaths nobody asked for, by slot
    memory: dict[str, Memory] = field(default_factory=dict)
    seconds: float = 0.0
    caught_up: bool = False
    lost_where: dict[EventKey, list[str]] = field(default_factory=dict)  # lost or never learned

    def failures(self) -> list[str]:
        """What missed the goal (nothing lost, every duplicate flagged); empty when met."""
        return self.reconciliation.failures() + ([] if self.caught_up else ["the pipeline did not catch up"])


def resident_mb(pid: int) -> float:
    """VmRSS of a process, in MB (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def last_log_line(path: Path | None) -> str:
    """The last line of a worker's log that says something (the soak's folder, and so the
    log, is removed after a run that met its goal)."""
    if path is None or not path.exists():
        return "no log"
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][-200:] if lines else "an empty log"


def kill_order(names: list[str], kills: int, rng: random.Random) -> list[str]:
    """Which worker each kill takes (last first): random, each slot as often as any other
    (rounds over a fresh shuffle), so a short soak kills the learn worker too."""
    order: list[str] = []
    while len(order) < kills:
        order.extend(rng.sample(names, len(names)))
    return order[:kills]


class Workers:
    """The worker slots (``ingest-1``.. and ``learn``): each runs one process at a time, with its
    own data folder that outlives the process; the learn slot's Qdrant is on disk there."""

    def __init__(self, settings: Settings, workdir: Path, ingest_workers: int, qdrant_switch: Path) -> None:
        self.settings = settings
        self.workdir = workdir
        self.switch = qdrant_switch
        self.names = [f"ingest-{n}" for n in range(1, ingest_workers + 1)] + ["learn"]
        self.running: dict[str, WorkerProcess] = {}
        self.launches: Counter[str] = Counter()
        self.memory = {name: Memory() for name in self.names}
        self.crashes: Counter[str] = Counter()

    def slot_settings(self, name: str) -> Settings:
        folder = self.workdir / name
        role = "learn" if name == "learn" else "ingest"
        return self.settings.model_copy(
            update={"role": role, "data_dir": folder / "data", "qdrant_path": folder / "qdrant"}
        )

    @property
    def learn_settings(self) -> Settings:
        return self.slot_settings("learn")

    def launch(self, name: str) -> WorkerProcess:
        worker = WorkerProcess(self.slot_settings(name), self.settings.broker_url)
        if name == "learn":
            worker.command = worker_command(self.switch)
        self.launches[name] += 1
        worker.log_path = self.workdir / "logs" / f"{name}.{self.launches[name]}.log"
        worker.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.running[name] = worker.launch()
        return worker

    def start_all(self, timeout: float = 180.0) -> None:
        for name in self.names:
            self.launch(name)
        for name in self.names:
            self.running[name].wait_ready(timeout)
            self.memory[name].start = self.sample(name)

    def kill(self, name: str) -> None:
        """SIGKILL, then a new process in the same slot at once."""
        self.running[name].kill()
        self.launch(name)

    def supervise(self, say: Callable[[str], None]) -> None:
        """Start again any worker that died on its own, saying how it ended; sample everyone's
        memory."""
        for name, worker in self.running.items():
            if worker.proc is None or worker.proc.poll() is not None:
                self.crashes[name] += 1
                status = None if worker.proc is None else worker.proc.returncode
                say(f"{name} exited on its own (status {status}): {last_log_line(worker.log_path)}")
                self.launch(name)
            self.sample(name)

    def sample(self, name: str) -> float:
        proc = self.running[name].proc
        mb = resident_mb(proc.pid) if proc is not None else 0.0
        memory = self.memory[name]
        memory.peak, memory.end = max(memory.peak, mb), mb
        return mb

    def learn_pending_points(self) -> float:
        try:
            return self.running["learn"].metrics().get("onevec_upsert_buffer_pending_points", 1.0)
        except OSError:
            return 1.0  # not answering yet

    def stop_all(self) -> None:
        for worker in self.running.values():
            worker.stop(timeout=60)


class Replay(threading.Thread):
    """Sends the input records paced over ``seconds``, a chunk at a time under ``gate`` (a
    broker cut takes the gate, so no send is in flight when the connections go)."""

    def __init__(
        self, settings: Settings, records: list[tuple[bytes, bytes]], seconds: float, gate: threading.Lock
    ) -> None:
        super().__init__(name="onevec-chaos-replay", daemon=True)
        self.settings, self.records, self.seconds, self.gate = settings, records, seconds, gate
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with EventProducer(
                bootstrap_servers(self.settings),
                self.settings.clicks_topic,
                **self.settings.kafka_client_options(),
            ) as producer:
                started = time.monotonic()
                chunk = max(1, int(len(self.records) * CHUNK_SECONDS / max(self.seconds, CHUNK_SECONDS)))
                for start in range(0, len(self.records), chunk):
                    due = started + self.seconds * start / len(self.records)
                    time.sleep(max(0.0, due - time.monotonic()))
                    with self.gate:
                        for key, value in self.records[start : start + chunk]:
                            producer.send_raw(key, value)
                        producer.flush()
                    self.sent = min(len(self.records), start + chunk)
        except BaseException as error:  # noqa: BLE001 - handed to the main thread
            self.error = error


def soak(settings: Settings, plan: ChaosPlan, console: Console) -> ChaosResult:
    """Run the plan on a broker of its own; the reconciled result (nothing printed but the
    progress lines)."""
    events = read_events(settings, plan.dataset, plan.events)
    workdir = plan.workdir or Path(tempfile.mkdtemp(prefix="onevec-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    records = input_records(events, [raw for raw, _ in MALFORMED])
    faults = plan.schedule()
    started = time.monotonic()
    plain_port = free_port()
    # The tool's own Kafka clients see the cuts it makes: their reconnection errors are expected.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    with TcpProxy(plain_port) as proxy, tansu_behind(proxy, plain_port, workdir / "tansu.log") as url:
        settings = settings.model_copy(
            update={
                "broker_url": url,
                "tansu": True,
                "checkpoint_interval_seconds": min(settings.checkpoint_interval_seconds, CHECKPOINT_SECONDS),
            }
        )
        ensure_topics(settings)
        workers = Workers(settings, workdir, plan.ingest_workers, workdir / "qdrant-down")
        result = ChaosResult(plan, workdir, Reconciliation(len(records), len(events), len(MALFORMED)))
        try:
            workers.start_all()

            def say(text: str) -> None:
                console.print(f"[dim]{time.monotonic() - started:6.1f}s[/dim] {text}")

            say(f"{len(workers.names)} workers ready; {len(records):,} records, {len(faults)} faults")
            run_faults(plan, faults, workers, proxy, settings, records, result, say)
            result.caught_up = catch_up(settings, events, workers, plan.catch_up_seconds, say)
            for name in workers.names:
                workers.sample(name)
        finally:
            workers.stop_all()
        result.crashes, result.memory = workers.crashes, workers.memory
        result.reconciliation = reconcile_topics(settings, events, MALFORMED, timeout=60, settle=1)
        learn = workers.learn_settings
        reconcile_qdrant(result.reconciliation, events, [learn.qdrant_path or workdir], learn.model_dim)
        missed = result.reconciliation.lost_keys + result.reconciliation.unlearned_keys
        if missed:
            result.lost_where = locate_inputs(settings, missed)
    result.seconds = time.monotonic() - started
    return result


def run_faults(
    plan: ChaosPlan,
    faults: list[str],
    workers: Workers,
    proxy: TcpProxy,
    settings: Settings,
    records: list[tuple[bytes, bytes]],
    result: ChaosResult,
    say: Callable[[str], None],
) -> None:
    """The replay, and one fault every ``plan.every`` seconds while it runs."""
    victims = kill_order(workers.names, plan.kills, random.Random(plan.seed + 1))
    gate = threading.Lock()
    replay = Replay(settings, records, len(faults) * plan.every + plan.cuts * CUT_SECONDS, gate)
    replay.start()
    outage_ends: float | None = None
    for fault in faults:
        due = time.monotonic() + plan.every  # after the previous fault (a cut lasts a while)
        while time.monotonic() < due:
            workers.supervise(say)
            if outage_ends is not None and time.monotonic() >= outage_ends:
                workers.switch.unlink()
                outage_ends = None
                say("Qdrant back")
            time.sleep(SUPERVISE_SECONDS)
        if fault == "kill":
            victim = victims.pop()
            workers.kill(victim)
            result.kills[victim] += 1
            say(f"kill -9 {victim}")
        elif fault == "cut":
            with gate:
                proxy.down()
                say(f"broker connections cut for {CUT_SECONDS:.0f}s")
                time.sleep(CUT_SECONDS)
                proxy.up()
            result.cuts += 1
        else:  # an outage during an outage makes it longer
            workers.switch.touch()
            outage_ends = time.monotonic() + OUTAGE_SECONDS
            result.outages += 1
            say(f"Qdrant down for {OUTAGE_SECONDS:.0f}s")
    replay.join()
    if outage_ends is not None:
        time.sleep(max(0.0, outage_ends - time.monotonic()))
        workers.switch.unlink()
    if replay.error is not None:
        raise replay.error


def catch_up(
    settings: Settings, events: pd.DataFrame, workers: Workers, timeout: float, say: Callable[[str], None]
) -> bool:
    """Wait (supervising) until every accepted event has an example, the learn worker's last
    checkpoint covers every example and its sink holds no pending point."""
    wanted = input_keys(events)
    seen: set[EventKey] = set()
    deadline = time.monotonic() + timeout
    learn = [workers.learn_settings.data_dir]
    with TopicReader(settings, settings.examples_topic) as reader:
        while time.monotonic() < deadline:
            workers.supervise(say)
            seen.update(example_key(e) for e in flatten(reader.read(quiet_ms=200)))
            if (
                seen >= wanted
                and workers.learn_pending_points() == 0
                and uncovered_examples(settings, learn) == 0
            ):
                say("caught up: every event has its example, the learner's checkpoint covers them all")
                return True
            time.sleep(1.0)
    say(f"[red]not caught up after {timeout:.0f}s: {len(wanted - seen)} events without an example[/red]")
    return False


def report(result: ChaosResult, console: Console) -> None:
    """The soak's table: faults, events, losses, duplicates, dead letters, Qdrant, memory."""
    plan, r = result.plan, result.reconciliation
    table = Table(title=f"onevec chaos: {plan.dataset}, {r.valid:,} events, seed {plan.seed}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    kills = ", ".join(f"{name} {count}" for name, count in sorted(result.kills.items()))
    rows = {
        "kills (kill -9, restarted)": f"{sum(result.kills.values())} ({kills})",
        "broker connection cuts": f"{result.cuts} x {CUT_SECONDS:.0f}s",
        "Qdrant outages": f"{result.outages} x {OUTAGE_SECONDS:.0f}s",
        "worker crashes (restarted)": str(sum(result.crashes.values())),
        "input records (events + malformed)": f"{r.inputs:,} ({r.valid:,} + {r.malformed})",
        "events accepted": f"{r.valid:,}",
        "examples on the topic": f"{r.examples:,}",
        "lost: accepted events without an example": str(r.lost),
        "lost: events only in flagged copies (never learned)": str(r.unlearned),
        "duplicates flagged": f"{r.duplicates_flagged:,}",
        "duplicates unflagged": str(r.duplicates_unflagged),
        "dead letters (missing, wrong reason)": f"{r.dead_letters} ({r.dead_lost}, {r.wrong_reasons})",
        "Qdrant items present / expected": f"{r.items_in_qdrant:,} / {r.items_expected:,}",
        "items with a wrong click count (clicks short, extra)": (
            f"{r.items_wrong_clicks} ({r.clicks_short}, {r.clicks_extra})"
        ),
    }
    for name, memory in result.memory.items():
        rows[f"resident MB {name}: start / end (peak)"] = (
            f"{memory.start:.0f} / {memory.end:.0f} ({memory.peak:.0f})"
        )
    rows["duration"] = f"{result.seconds:.0f}s"
    for name, value in rows.items():
        table.add_row(name, value)
    console.print(table)
    for key, where in result.lost_where.items():
        kind = "lost" if key in r.lost_keys else "never learned"
        console.print(f"{kind} {key}: its click at (partition:offset) {', '.join(where) or 'nowhere'}")


def run_chaos(settings: Settings, plan: ChaosPlan, console: Console) -> bool:
    """Run the soak, print its table; True when nothing was lost and every duplicate flagged.
    A temporary work folder is removed after a run that met the goal, kept otherwise."""
    result = soak(settings, plan, console)
    report(result, console)
    failures = result.reconciliation.failures() + (
        [] if result.caught_up else ["the pipeline did not catch up"]
    )
    if failures:
        console.print(f"[red]goal missed: {'; '.join(failures)}[/red] (logs and data: {result.workdir})")
    elif plan.workdir is None:
        shutil.rmtree(result.workdir, ignore_errors=True)
    return not failures
