"""The package layout: one import name once installed, every package listed for the build, and
the layer contracts of DESIGN.md enforced (they fail when a layer imports upwards)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("streams", "models", "monitoring", "deploy")
BIN = Path(sys.executable).parent


def test_pyproject_lists_every_package_folder() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    found = {
        "onevec." + ".".join(init.parent.relative_to(ROOT).parts)
        for layer in LAYERS
        for init in (ROOT / layer).rglob("__init__.py")
    }
    assert listed == found


def test_an_install_exposes_only_the_onevec_name(tmp_path: Path) -> None:
    source = tmp_path / "source"  # a copy: building in place would leave build/ in the checkout
    for layer in LAYERS:
        shutil.copytree(ROOT / layer, source / layer, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            tmp_path,
            source,
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("onevec-*.whl")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"onevec"}

    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site, wheel],
        check=True,
        capture_output=True,
    )
    probe = (
        "import importlib.util, onevec.models.fusion, onevec.streams.settings;"
        "print(onevec.models.fusion.__file__);"
        "print([importlib.util.find_spec(name) for name in ('models', 'streams', 'monitoring', 'deploy')])"
    )
    # Run away from the checkout, so its folders are not importable from the working directory.
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(site)},
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    assert out[0].startswith(str(site / "onevec" / "models"))
    assert out[1] == "[None, None, None, None]"


def _lint_imports(view: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BIN / "lint-imports", "--config", ROOT / "pyproject.toml", "--no-cache"],
        cwd=view,
        env={**os.environ, "PYTHONPATH": str(view)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_layer_contracts_hold_and_catch_an_upward_import(tmp_path: Path) -> None:
    package = tmp_path / "onevec"
    package.mkdir()
    (package / "__init__.py").touch()
    for layer in LAYERS:
        shutil.copytree(ROOT / layer, package / layer, ignore=shutil.ignore_patterns("__pycache__"))
    kept = _lint_imports(tmp_path)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert "0 broken" in kept.stdout

    # models may not import streams: the layers contract breaks and names the import.
    fusion = package / "models" / "fusion.py"
    fusion.write_text(fusion.read_text() + "\nfrom onevec.streams.settings import Settings  # noqa\n")
    broken = _lint_imports(tmp_path)
    assert broken.returncode != 0
    assert "Layers point one way: streams -> monitoring -> models BROKEN" in broken.stdout
    assert "onevec.models.fusion -> onevec.streams.settings" in broken.stdout
