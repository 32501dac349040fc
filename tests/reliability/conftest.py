"""Fixtures for the reliability tests: a local S3 server for Tansu's persistent storage."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from onevec.deploy.embedded_broker import free_port, wait_for_port
from onevec.deploy.processes import stop_process

S3RVER_VERSION = "3.7.1"  # npm package: a file-backed S3 API, enough for Tansu's s3:// engine
BUCKET = "tansu"


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    bucket: str

    def tansu_env(self) -> dict[str, str]:
        """What Tansu's s3:// storage engine reads (the object_store crate's AWS_* variables)."""
        return {
            "AWS_ENDPOINT": self.endpoint,
            "AWS_ACCESS_KEY_ID": "S3RVER",  # s3rver's fixed development credentials
            "AWS_SECRET_ACCESS_KEY": "S3RVER",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
        }


def s3rver_bin() -> Path:
    """s3rver from npm, installed once into a cache folder (the npm registry is reachable)."""
    if shutil.which("npm") is None or shutil.which("node") is None:
        pytest.skip("node/npm not installed: no local S3 server for Tansu's s3:// storage")
    prefix = Path(os.environ.get("ONEVEC_NPM_CACHE", Path.home() / ".cache" / "onevec" / "npm"))
    binary = prefix / "node_modules" / ".bin" / "s3rver"
    if not binary.exists():
        prefix.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "npm",
                "install",
                "--no-audit",
                "--no-fund",
                "--prefix",
                str(prefix),
                f"s3rver@{S3RVER_VERSION}",
            ],
            check=True,
            capture_output=True,
            timeout=300,
        )
    return binary


@pytest.fixture
def s3_server(tmp_path: Path) -> Iterator[S3Server]:
    port = free_port()
    log = tmp_path / "s3rver.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(s3rver_bin()), "-d", str(tmp_path / "s3"), "-a", "127.0.0.1", "-p", str(port), "--silent",
             "--configure-bucket", BUCKET],
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for_port("127.0.0.1", port, 30)
        yield S3Server(endpoint=f"http://127.0.0.1:{port}", bucket=BUCKET)
    finally:
        stop_process(proc, 10)
