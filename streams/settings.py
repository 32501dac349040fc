"""One settings object for every onevec process.

Read from environment variables prefixed ``ONEVEC_`` or from a ``.env``-style file named by
``ONEVEC_SETTINGS_FILE`` (default ``onevec.env``). The same names work for the embedded
defaults and a real deployment: switching to real services is only a change of URLs.
"""

from __future__ import annotations

import json
import os
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.config import ModelConfig

__all__ = ["Settings", "load_settings"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ONEVEC_",
        env_file=os.environ.get("ONEVEC_SETTINGS_FILE", "onevec.env"),
        extra="ignore",
    )

    # Kafka. Empty broker_url means: start the embedded Tansu broker on loopback.
    broker_url: str = ""
    # The broker is Tansu (set automatically for the embedded one): use short group timeouts.
    tansu: bool = False
    app_id: str = "onevec"
    partitions: int = Field(default=4, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    clicks_topic: str = "onevec-clicks"
    dlq_topic: str = "onevec-clicks-dlq"
    examples_topic: str = "onevec-examples"
    sessions_topic: str = "onevec-sessions-closed"

    # Qdrant: a URL for a server; otherwise qdrant-client local mode, on disk at qdrant_path
    # or, by default, in memory. Local mode on disk writes every point through SQLite and
    # pickles (the learner then spends most of its time there); in memory it is ~10x faster,
    # and nothing is lost: vectors are derived state, re-published from the restored
    # checkpoint when a worker starts.
    qdrant_url: str = ""
    qdrant_api_key: SecretStr | None = None
    qdrant_path: Path | None = None

    # Session windows (event time).
    session_gap_seconds: float = Field(default=1800.0, gt=0)
    max_session_items: int = Field(default=50, ge=1)
    max_open_sessions: int = Field(default=200_000, ge=1)

    # Learner and Qdrant sink.
    catalog: str = ""  # dataset name or catalogue file whose attributes feed the item encoder
    model_dim: int = Field(default=64, ge=2)
    model_seed: int = 0
    model_objective: Literal["sgns", "bpr"] = "sgns"  # item objective: session skip-gram or user BPR
    learner_batch_size: int = Field(default=256, ge=1)
    learner_batch_within_seconds: float = Field(default=0.5, gt=0)
    learner_queue_batches: int = Field(default=8, ge=1)
    upsert_batch_points: int = Field(default=256, ge=1)
    upsert_interval_ms: float = Field(default=500.0, gt=0)
    upsert_min_change: float = Field(default=0.01, ge=0)  # cosine distance that re-publishes an item
    checkpoint_interval_seconds: float = Field(default=30.0, gt=0)
    fusion_weights: dict[str, float] = {"behaviour": 1.0, "text": 1.0, "image": 1.0}
    clicks_for_full_weight: float = Field(default=20.0, gt=0)  # behaviour's full share in fusion

    # Validation limits.
    max_event_bytes: int = Field(default=64 * 1024, ge=64)
    min_event_time: float = 631_152_000.0  # 1990-01-01: older is a broken clock, not a click
    max_clock_skew_seconds: float = 86_400.0  # events from further in the future are rejected
    max_http_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)

    # Listeners. Everything binds loopback unless configured otherwise.
    bind_host: str = "127.0.0.1"
    web_port: int = Field(default=0, ge=0, le=65535)  # 0 = pick a free port
    data_dir: Path = Path(".onevec")
    log_level: str = "warning"

    def model_config_for_training(self) -> ModelConfig:
        return ModelConfig(dim=self.model_dim, seed=self.model_seed, objective=self.model_objective)

    @property
    def embedded(self) -> bool:
        return not self.broker_url

    @cached_property
    def faust_broker_options(self) -> dict[str, float]:
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
            # Tansu reports a partition's end offset as the base offset of its last record
            # batch + 1, so Faust's table recovery stops before the last batch's records and
            # a restarted worker loses state. One record per batch makes the end offset exact.
            "producer_max_batch_size": 1,
        }

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
    return Settings(**overrides)  # type: ignore[arg-type]
