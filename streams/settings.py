"""One settings object for every onevec process.

Read from environment variables prefixed ``ONEVEC_`` or from a ``.env``-style file named by
``ONEVEC_SETTINGS_FILE`` (default ``onevec.env``). The same names work for the embedded
defaults and a real deployment: switching to real services is only a change of URLs.
"""

from __future__ import annotations

import json
import os
import re
import ssl
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from onevec.models.online.config import ModelConfig
from onevec.streams.user_errors import settings_error, warn_unknown_variables

__all__ = ["Settings", "load_settings"]

MIN_TOKEN_CHARS = 16
_MODEL = ModelConfig()  # the model settings default to the model's own defaults (the recipe)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ONEVEC_",
        env_file=os.environ.get("ONEVEC_SETTINGS_FILE", "onevec.env"),
        extra="ignore",
        hide_input_in_errors=True,  # a refused secret must not be echoed into logs
    )

    # Kafka. Empty broker_url means: start the embedded Tansu broker on loopback.
    broker_url: str = ""
    # The broker is Tansu (set automatically for the embedded one): use short group timeouts.
    tansu: bool = False
    app_id: str = "onevec"
    # What this worker runs: "ingest" (sessions, the session table, HTTP ingest), "learn" (the
    # learner, the Qdrant sink and the lookups), or "all" (both in one process). Left unset
    # anywhere, `onevec worker` runs an ingest and a learn process under a supervisor
    # (onevec.streams.supervisor), so the two halves stop sharing one interpreter lock.
    role: Literal["all", "ingest", "learn"] = "all"
    partitions: int = Field(default=4, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    clicks_topic: str = "onevec-clicks"
    dlq_topic: str = "onevec-clicks-dlq"
    examples_topic: str = "onevec-examples"
    sessions_topic: str = "onevec-sessions-closed"
    catalog_topic: str = "onevec-catalog"  # compacted, keyed by item_id (docs/static.md)

    # Qdrant: a URL for a server; otherwise qdrant-client local mode, on disk at qdrant_path
    # or, by default, in memory. Local mode on disk writes every point through SQLite and
    # pickles (the learner then spends most of its time there); in memory it is ~10x faster,
    # and nothing is lost: vectors are derived state, re-published from the restored
    # checkpoint when a worker starts.
    qdrant_url: str = ""
    qdrant_api_key: SecretStr | None = None
    qdrant_path: Path | None = None
    # The engine on disk at qdrant_path (no URL): "edge", the Qdrant engine in-process (HNSW and
    # payload indexes, indexed in a child process; docs/operations.md), or "local", qdrant-client's
    # local mode (brute force). In memory (no qdrant_path) it is always local mode.
    qdrant_engine: Literal["edge", "local"] = "local"

    # Session windows (event time).
    session_gap_seconds: float = Field(default=1800.0, gt=0)
    max_session_items: int = Field(default=50, ge=1)
    max_open_sessions: int = Field(default=200_000, ge=1)

    # Against Tansu a fetch waits this long even when records arrive meanwhile (see
    # streams/faust_fixes.py); Faust's own 1,500 ms then dominates an idle worker's freshness.
    tansu_fetch_max_wait_ms: int = Field(default=100, ge=1)

    # Sessionize micro-batches: the agent takes up to this many click events at once (waiting
    # at most ``within`` for more), sends one examples record per partition and one changelog
    # record per changed session: the per-event produce round trips were the pipeline's cost.
    sessionize_batch_size: int = Field(default=1000, ge=1)
    sessionize_batch_within_seconds: float = Field(default=0.05, gt=0)
    # An examples record's JSON stays under this (a batch is split): below the broker's and the
    # producer's 1 MiB message limits, whatever the ids' lengths.
    examples_record_max_bytes: int = Field(default=512 * 1024, ge=1024)

    # Learner and Qdrant sink.
    catalog: str = ""  # dataset name or catalogue file whose attributes feed the item encoder
    model_dim: int = Field(default=64, ge=2)
    model_seed: int = 0
    model_objective: Literal["sgns", "bpr"] = "sgns"  # item objective: session skip-gram or user BPR
    # Sampled negatives per step (log-Q corrected); replay steps per step, examples per replay
    # step (0: as many as the step) and the replay buffer's size; the repeat gate over each
    # user's own history, bounded to model_history_users users of model_history_items items
    # (see models/online/config.py and docs/model.md).
    model_negatives: int = Field(default=_MODEL.negatives, ge=1)
    model_replay: int = Field(default=_MODEL.replay, ge=0)
    model_replay_batch: int = Field(default=_MODEL.replay_batch or 0, ge=0)
    model_replay_size: int = Field(default=_MODEL.replay_size, ge=1)
    model_repeat_gate: bool = _MODEL.repeat_gate
    model_history_users: int = Field(default=_MODEL.history_users, ge=1)
    model_history_items: int = Field(default=_MODEL.history_items, ge=1)
    model_follows: bool = _MODEL.follows  # what followed what in sessions, read by the gate
    model_follows_entries: int = Field(default=_MODEL.follows_entries, ge=1)  # followers in all
    learner_batch_size: int = Field(default=256, ge=1)
    # A batch waits this long for more examples only while the learner keeps up (when it falls
    # behind, the queue holds full batches): short, so freshness is not spent waiting.
    learner_batch_within_seconds: float = Field(default=0.02, gt=0)
    # Torch intra-op threads of the worker (0 = torch's default, one per core). One: the learner
    # shares the process with the event loop, and on a busy machine torch's thread pool spinning
    # for cores it cannot get made tensor ops ~10x slower (docs/performance.md).
    learner_torch_threads: int = Field(default=1, ge=0)
    # Examples the learner may hold queued, in batches: at least a round's worth (below).
    learner_queue_batches: int = Field(default=32, ge=1)
    # Under backlog a round takes up to this many queued batches at once (never waiting for
    # them): its points, drift update and sweep are done once for all its steps. An item
    # clicked several times in a round is published once, so larger rounds make the learner
    # faster exactly when it is behind (rounds of 4 / 8 / 16 batches: 0.69 / 0.74 / 0.79 of a
    # raw torch loop, docs/performance.md), at the cost of up to one round (~0.4 s) of
    # freshness then. Without a backlog rounds stay one batch.
    learner_round_batches: int = Field(default=16, ge=1)
    upsert_batch_points: int = Field(default=256, ge=1)
    # The learner hands over a whole step's items at once, so a short age limit still writes
    # full batches; a long one only adds latency.
    upsert_interval_ms: float = Field(default=100.0, gt=0)
    upsert_max_pending_points: int = Field(default=10_000, ge=1)  # then back-pressure, never drop
    upsert_min_change: float = Field(default=0.01, ge=0)  # cosine distance that re-publishes an item
    # Clicked and new items are published at once; items that only moved (a shared attribute
    # token, a sampled negative) are swept this often, so the sink writes each at most once per
    # sweep instead of once per learner step.
    upsert_refresh_seconds: float = Field(default=5.0, ge=0)
    # A sweep re-publishes at most this many items per learner round (a large catalogue is swept
    # over several rounds: bounded memory and sink load).
    upsert_sweep_items: int = Field(default=2048, ge=1)
    # Share of examples the live prequential HR@20 / MRR@20 is measured on (test-then-train:
    # a ranking over every item per example, the learner's largest cost after training).
    prequential_sample_rate: float = Field(default=1.0, gt=0, le=1)
    # Catalogue size up to which every learner step is scored. Above it a step is scored with
    # probability budget / known items (every example alike, so HR/MRR stay unbiased): a
    # step's ranking and its full item matrix grow with the catalogue, and at 1M items they
    # were most of a learner step. Scoring then costs about the same per example at any size.
    prequential_item_budget: int = Field(default=50_000, ge=1)
    # A step's ranking reads its items on a thread of its own beside the training (the same
    # ranks as read inline): a round costs its training, not also the rows read, on a machine
    # with a core to spare (docs/performance.md).
    prequential_ranking_thread: bool = True
    checkpoint_interval_seconds: float = Field(default=30.0, gt=0)
    fusion_weights: dict[str, float] = {"behaviour": 1.0, "text": 1.0, "image": 1.0}
    clicks_for_full_weight: float = Field(default=20.0, gt=0)  # behaviour's full share in fusion
    # Static vectors: the bundle `onevec static build` writes (default <data_dir>/static).
    static_dir: Path | None = None

    @property
    def static_path(self) -> Path:
        return self.static_dir or self.data_dir / "static"

    @property
    def learner_round_examples(self) -> int:
        """Most examples a learner round takes from a backlog (then it stops adding records)."""
        return self.learner_batch_size * self.learner_round_batches

    # Drift and predictability monitoring (monitoring/drift.py, docs/monitoring.md).
    drift_window_seconds: float = Field(default=60.0, gt=0)
    drift_reference_seconds: float = Field(default=3600.0, ge=0)  # reference rotation; 0 = on demand only
    drift_warmup_examples: int = Field(default=5000, ge=0)  # learned before the first reference
    drift_anchor_items: int = Field(default=200, ge=3)
    drift_thresholds: dict[str, float] = {}  # overrides of onevec.monitoring.drift.DEFAULT_THRESHOLDS
    predictability_labels: list[str] = ["genre", "decade", "category", "department", "brand"]

    # Validation limits.
    max_event_bytes: int = Field(default=64 * 1024, ge=64)
    min_event_time: float = 631_152_000.0  # 1990-01-01: older is a broken clock, not a click
    max_clock_skew_seconds: float = 86_400.0  # events from further in the future are rejected
    # Numeric event timestamps: seconds ("s"), milliseconds ("ms", common on Kafka), or "auto":
    # a number above 1e11 is milliseconds (1e11 s is the year 5138; 1e11 ms is 1973).
    timestamp_unit: Literal["s", "ms", "auto"] = "s"
    # A restored checkpoint whose offsets belong to another stream (another broker, a recreated
    # examples topic): keep the model and learn the new stream from its start, or refuse to start.
    checkpoint_other_stream: Literal["restart_offsets", "refuse"] = "restart_offsets"
    max_http_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    # POST /events answers 200 only once the broker acknowledged every event of the body; after
    # this long without that it answers 503 (send again: duplicates are recognised downstream).
    http_delivery_timeout_seconds: float = Field(default=30.0, gt=0)
    # A connection must send a whole request head within this long of opening, or of its last
    # answer, or it is closed (slow-header clients, idle keep-alive connections).
    http_idle_timeout_seconds: float = Field(default=5.0, gt=0)
    # POST /events: the whole body within this long of its head, or 408 (slow-body clients).
    http_body_timeout_seconds: float = Field(default=30.0, gt=0)

    # Security, all off by default (embedded broker, local Qdrant, loopback listeners). Secrets
    # are SecretStr: they print as '**********' in reprs, logs and tracebacks.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    kafka_sasl_username: str = ""
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None  # CA bundle that signed the brokers' certificates
    kafka_ssl_certfile: Path | None = None  # client certificate (mutual TLS), optional
    kafka_ssl_keyfile: Path | None = None
    qdrant_https: bool | None = None  # None: follow the URL's scheme
    # When set, every write (POST /events, POST /drift) needs "Authorization: Bearer <token>", and
    # with http_token_for_reads every lookup too (/items, /sessions, /similar, /recommend, /stats,
    # GET /drift); /metrics and /healthz stay open for scrapers and probes (docs/operations.md).
    http_ingest_token: SecretStr | None = None
    http_token_for_reads: bool = False

    @field_validator("http_ingest_token")
    @classmethod
    def _guessable_token(cls, token: SecretStr | None) -> SecretStr | None:
        # Refused, not ignored: an empty token made "Bearer " a valid credential, and a set but
        # empty variable is usually a secret that failed to mount.
        if token is None:
            return None
        value = token.get_secret_value()
        if len(value) < MIN_TOKEN_CHARS:
            raise ValueError(
                f"must be at least {MIN_TOKEN_CHARS} characters, e.g. from `openssl rand -hex 32` "
                "(unset the variable to run without a token)"
            )
        if not re.fullmatch(r"[A-Za-z0-9._~+/=-]+", value):
            raise ValueError("may hold only letters, digits and -._~+/= (an RFC 6750 bearer token)")
        return token

    # Listeners. Everything binds loopback unless configured otherwise.
    bind_host: str = "127.0.0.1"
    web_port: int = Field(default=0, ge=0, le=65535)  # 0 = pick a free port
    data_dir: Path = Path(".onevec")
    log_level: str = "warning"
    # A graceful stop (SIGTERM/SIGINT) that has not finished by then ends the process as a crash
    # would: Faust's stop can wait forever on an unreachable broker, and what a crash leaves is
    # recovered from the checkpoint and the broker. Longer than a parent's own wait (30 s).
    stop_timeout_seconds: float = Field(default=45.0, gt=0)

    def model_config_for_training(self) -> ModelConfig:
        return ModelConfig(
            dim=self.model_dim,
            seed=self.model_seed,
            objective=self.model_objective,
            negatives=self.model_negatives,
            replay=self.model_replay,
            replay_batch=self.model_replay_batch or None,
            replay_size=self.model_replay_size,
            repeat_gate=self.model_repeat_gate,
            history_users=self.model_history_users,
            history_items=self.model_history_items,
            follows=self.model_follows,
            follows_entries=self.model_follows_entries,
        )

    @property
    def embedded(self) -> bool:
        return not self.broker_url

    @property
    def group_id(self) -> str:
        """The Faust app id, which is the consumer group. A learn worker has its own group: it
        must get every examples partition, not share them with the ingest workers."""
        return f"{self.app_id}-learn" if self.role == "learn" else self.app_id

    @property
    def runs_sessions(self) -> bool:
        return self.role != "learn"

    @property
    def runs_learner(self) -> bool:
        return self.role != "ingest"

    @cached_property
    def faust_broker_options(self) -> dict[str, Any]:
        """Consumer-group timeouts.

        Tansu holds each group join for half the session timeout, so Faust's defaults make a
        rebalance take 30 s+; these values make a worker ready in seconds. Real Kafka keeps
        Faust's defaults.
        """
        if not (self.embedded or self.tansu):
            return {}
        return {
            "broker_session_timeout": 6.0,
            "broker_heartbeat_interval": 1.0,
            "broker_rebalance_timeout": 20.0,
            "broker_request_timeout": 30.0,
            # Tansu's end offsets are those of the last record *batch*: streams/faust_fixes.py
            # corrects the changelog highwaters, so the producer can batch as usual.
        }

    def kafka_client_options(self) -> dict[str, Any]:
        """Security options for kafka-python clients (admin, producer, plain consumers)."""
        protocol = self.kafka_security_protocol
        options: dict[str, Any] = {"security_protocol": protocol}
        if protocol.startswith("SASL"):
            options["sasl_mechanism"] = self.kafka_sasl_mechanism
            options["sasl_plain_username"] = self.kafka_sasl_username
            password = self.kafka_sasl_password
            options["sasl_plain_password"] = password.get_secret_value() if password else ""
        if protocol.endswith("SSL"):
            options["ssl_check_hostname"] = True
            for name in ("cafile", "certfile", "keyfile"):
                value = getattr(self, f"kafka_ssl_{name}")
                if value is not None:
                    options[f"ssl_{name}"] = str(value)
        return options

    def kafka_ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for Faust/aiokafka (None without TLS): verifies the brokers against
        ``kafka_ssl_cafile`` (else the system CAs) and presents a client certificate if set."""
        if not self.kafka_security_protocol.endswith("SSL"):
            return None
        context = ssl.create_default_context(
            cafile=str(self.kafka_ssl_cafile) if self.kafka_ssl_cafile else None
        )
        if self.kafka_ssl_certfile is not None:
            keyfile = str(self.kafka_ssl_keyfile) if self.kafka_ssl_keyfile else None
            context.load_cert_chain(str(self.kafka_ssl_certfile), keyfile)
        return context

    def to_env(self) -> dict[str, str]:
        """These settings as ONEVEC_* variables, for a child process (secrets included)."""
        env = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            # Complex values are JSON in the environment, as pydantic-settings reads them.
            text = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
            env[f"ONEVEC_{name.upper()}"] = text
        return env


def load_settings(**overrides: object) -> Settings:
    """The settings of a command: a refused value is a UserError naming its variable, and an
    ``ONEVEC_*`` variable that is no setting is warned about (a typo would otherwise be
    silently ignored)."""
    warn_unknown_variables(os.environ, Settings.model_fields)
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        raise settings_error(error) from None
