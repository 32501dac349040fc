"""The README's table of HTTP routes names every route the worker registers, and no other."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_lists_every_http_route() -> None:
    registered = set(re.findall(r'@app\.page\("([^"]+)"\)', (ROOT / "streams/http_api.py").read_text()))
    section = (ROOT / "README.md").read_text().split("## HTTP routes", 1)[1].split("\n## ", 1)[0]
    listed = {path.split("?")[0] for path in re.findall(r"^\| [A-Z, ]+ \| `([^`]+)`", section, re.MULTILINE)}
    assert listed == registered
