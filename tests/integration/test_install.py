"""The namespaced install (issue 11): a wheel of the project holds only ``dockhand`` (and its
dist-info), and a throwaway project with its own ``schemas`` and ``worker`` modules installs it
beside them: both work, and dockhand never imports the project's modules.

No network: the wheel is built with pip's local find-links, installed with ``--no-index
--no-deps``, and the throwaway venv reaches the dependencies through a ``.pth`` file naming this
project's ``.venv`` site-packages."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import REPO

pytestmark = pytest.mark.slow  # a wheel build and a venv: ~20 s


@dataclass
class Installed:
    wheel: Path
    venv: Path
    project: Path

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"


def _run(argv: list[str | Path], cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    # Without PYTHONPATH: nothing may reach the repository's own sources but the installed wheel.
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME"}}
    out = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert out.returncode == 0, f"{argv}: exit {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("install")
    # Build from a copy of what the wheel is made of: a build in the repository would leave build/
    # and *.egg-info in the shared working tree, and a stale build/ could hide a packaging mistake.
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for name in ("dockhand", "worker", "schemas"):  # dockhand/worker, dockhand/schemas stay symlinks
        shutil.copytree(REPO / name, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    dist = root / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", src, "-w", dist])
    (wheel,) = dist.glob("dockhand-*.whl")

    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", "--no-index", wheel])
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip())
    # The dependencies (faststream, aio-pika, ...) from this project's venv, after the venv's own
    # site-packages (which holds dockhand); a path from a .pth file is not scanned for .pth files
    # itself, so the editable install of the repository there stays out.
    (site / "dockhand-test-deps.pth").write_text(sysconfig.get_path("purelib") + "\n")

    project = root / "project"
    project.mkdir()
    (project / "schemas.py").write_text('WHO = "mine"\n')
    (project / "worker.py").write_text('WHO = "mine"\n')
    return Installed(wheel, venv, project)


def test_the_wheel_holds_only_the_dockhand_package(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as whl:
        names = whl.namelist()
        entry_points = whl.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    top = {name.split("/", 1)[0] for name in names}
    dist_info = {t for t in top if t.endswith(".dist-info")}
    assert len(dist_info) == 1
    assert dist_info.pop().startswith("dockhand-")
    assert top - {t for t in top if t.endswith(".dist-info")} == {"dockhand"}, top
    # The worker and the schemas are inside, under dockhand/, with the committed JSON Schemas.
    assert "dockhand/worker/app.py" in names
    assert "dockhand/schemas/__init__.py" in names
    assert "dockhand/client/__init__.py" in names
    # The dashboard's page is package data (it is served from the installed package).
    for static in ("index.html", "app.js", "app.css"):
        assert f"dockhand/dashboard/static/{static}" in names
    committed = {p.name for p in (REPO / "schemas" / "json").glob("*.json")}
    packaged = {n.rsplit("/", 1)[1] for n in names if n.startswith("dockhand/schemas/json/") and n.endswith(".json")}
    assert committed
    assert packaged == committed
    assert "dockhand = dockhand.cli:main" in entry_points


def test_a_project_with_its_own_schemas_and_worker_modules_installs_dockhand_beside_them(
    installed: Installed,
) -> None:
    check = textwrap.dedent(
        """
        import sys
        from importlib.resources import files
        from pathlib import Path

        import schemas
        import worker

        assert (schemas.WHO, worker.WHO) == ("mine", "mine")
        import dockhand
        import dockhand.cli
        import dockhand.client
        import dockhand.schemas
        import dockhand.worker.app

        # The installed wheel, not the repository's sources.
        assert Path(dockhand.__file__).is_relative_to(sys.prefix), dockhand.__file__
        assert Path(dockhand.worker.app.__file__).is_relative_to(sys.prefix), dockhand.worker.app.__file__
        # dockhand did not import (or replace) the project's modules.
        assert sys.modules["schemas"] is schemas
        assert sys.modules["worker"] is worker
        assert schemas.WHO == "mine"
        project = Path.cwd()
        leaked = [
            name for name, module in list(sys.modules.items())
            if name.startswith("dockhand") and Path(getattr(module, "__file__", None) or "/").is_relative_to(project)
        ]
        assert not leaked, leaked
        assert "workspace.create" in dockhand.schemas.COMMAND_TYPES
        assert any(p.name.endswith(".json") for p in (files("dockhand.schemas") / "json").iterdir())
        print("ok")
        """
    )
    out = _run([installed.python, "-c", check], cwd=installed.project)
    assert out.stdout.strip() == "ok"
    # Elsewhere there is no top-level `schemas` or `worker` at all: the wheel added none.
    elsewhere = installed.project.parent
    for module in ("schemas", "worker"):
        probe = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is not None)"
        _run([installed.python, "-c", probe], cwd=elsewhere)
    # The console script.
    help_out = _run([installed.venv / "bin" / "dockhand", "--help"], cwd=installed.project)
    assert "send" in help_out.stdout
    assert "events" in help_out.stdout
