"""Lookups a new user trips over, on a real worker over loopback: a filter on an attribute no item
has (400 naming it and the known ones; the CLI prints one line and exits 2), a user's open
sessions (GET /sessions?user=), and /healthz reporting each part's readiness while the learner
is still starting (its Qdrant down: a fake switch, see onevec.streams.tools.qdrant_outage)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from onevec.models.catalog import load_attributes
from onevec.streams.tools.qdrant_outage import worker_command
from onevec.streams.worker import WorkerProcess
from tests.kafka_helpers import post_events, wait_processed


def get(worker: WorkerProcess, path: str) -> tuple[int, Any]:
    """(status, JSON answer) of a GET, error statuses included."""
    try:
        with urllib.request.urlopen(f"{worker.base_url}{path}", timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def click(user: str, item: str, ts: float, **extra: object) -> dict[str, object]:
    return {"user_id": user, "item_id": item, "event_type": "click", "timestamp": ts, **extra}


def test_unknown_filter_attribute_is_a_clear_error(start_worker, tmp_path) -> None:
    catalog = tmp_path / "catalog.csv"
    catalog.write_text("item_id,year\na,1995\nb,1996\nc,2004\n")
    known = sorted({key for attrs in load_attributes(str(catalog)).values() for key in attrs})
    assert known  # the catalogue gives the items attributes to filter on
    worker = start_worker(catalog=str(catalog))

    status, answer = get(worker, "/similar/a?filter=genre%3DSci-Fi")
    assert status == 400
    assert answer["error"] == f"no item has the attribute 'genre' (known: {', '.join(known)})"
    assert get(worker, "/similar/a?filter=genre")[0] == 400  # not attribute=value
    known_filter = urllib.parse.urlencode({"filter": f"{known[0]}=x"})
    assert get(worker, f"/similar/a?{known_filter}")[0] != 400  # a known attribute is looked up

    for given, error in [
        (
            "genre=Sci-Fi",
            f"the worker answered 400: no item has the attribute 'genre' (known: {', '.join(known)})",
        ),
        ("genre", "--filter 'genre': expected attribute=value"),
    ]:
        cli = subprocess.run(
            [sys.executable, "-m", "onevec.streams.cli", "similar", "a", "--worker", worker.base_url]
            + ["--filter", given],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert cli.returncode == 2, cli.stderr
        assert cli.stderr.strip().splitlines() == [f"error: {error}"]
        assert "Traceback" not in cli.stdout + cli.stderr


def test_a_users_open_sessions_are_listed(start_worker) -> None:
    worker = start_worker()
    events = [
        click("u1", "a", 1e9),
        click("u1", "b", 1e9 + 5),
        click("u1", "c", 1e9 + 7, session_id="web-42"),  # the producer's own session id
        click("u2", "a", 1e9 + 9),
    ]
    assert post_events(worker.base_url, json.dumps(events).encode())[0] == 200
    wait_processed(worker, len(events))

    status, answer = get(worker, "/sessions?user=u1")
    assert status == 200
    found = sorted((s["key"], s["session_id"], s["items"]) for s in answer["sessions"])
    assert found == [("user:u1", "user:u1@1000000000", ["a", "b"]), ("web-42", "web-42", ["c"])]
    assert answer["partitions"] == [0, 1, 2, 3]  # the one worker holds every partition
    # Each listed key opens the session itself.
    assert get(worker, "/sessions/" + urllib.parse.quote("user:u1"))[1]["items"] == ["a", "b"]
    assert get(worker, "/sessions?user=nobody") == (
        200,
        {"user_id": "nobody", "partitions": [0, 1, 2, 3], "sessions": []},
    )
    assert get(worker, "/sessions")[0] == 400


def test_healthz_reports_readiness_per_part_while_the_learner_starts(settings, tmp_path) -> None:
    down = tmp_path / "qdrant-down"
    down.touch()
    worker = WorkerProcess(settings.model_copy(update={"qdrant_path": None}), settings.broker_url)
    worker.command = worker_command(down)
    worker.launch()
    try:
        deadline = time.monotonic() + 120
        while True:  # until the session side is up: the learner cannot be, Qdrant is down
            try:
                status, health = get(worker, "/healthz")
                if health["parts"]["sessions"]["ready"]:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the session side never got ready"
            time.sleep(0.5)
        assert status == 200 and health["status"] == "starting" and health["ready"] is False
        assert health["role"] == "all" and health["parts"]["learner"]["store_ready"] is False
        assert health["parts"]["learner"]["ready"] is False
        assert get(worker, "/healthz?ready")[0] == 503  # for readiness probes

        down.unlink()  # Qdrant back: the learner finishes starting
        while not (health := get(worker, "/healthz")[1])["ready"]:
            assert time.monotonic() < deadline + 120, f"the learner never got ready: {health}"
            time.sleep(0.5)
        assert health["status"] == "ok"
        assert all(health["parts"]["learner"].values()) and all(health["parts"]["sessions"].values())
        assert get(worker, "/healthz?ready")[0] == 200
    finally:
        worker.stop()
