"""README's "Use it from Python" example runs as written, against a real worker, broker and daemon."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from .conftest import AMQP_URL, REPO, TEST_IMAGE, WorkerProcess, _docker_cli


def readme_example() -> str:
    """The first ```python block under the "## Use it from Python" heading."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Use it from Python\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"^```python\n(.*?)^```$", section, re.DOTALL | re.MULTILINE)
    assert match, 'no ```python block under "## Use it from Python"'
    return match.group(1)


def test_the_readme_python_example_runs(worker: WorkerProcess, tmp_path: Path) -> None:
    script = tmp_path / "readme_example.py"
    script.write_text(readme_example())
    env = {
        **os.environ,
        "DOCKHAND_AMQP_URL": AMQP_URL,
        "DOCKHAND_EXCHANGE_PREFIX": worker.prefix,
        "DOCKHAND_HOST_ID": worker.host_id,
        "DOCKHAND_EXAMPLE_IMAGE": TEST_IMAGE,
    }
    run = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180, check=False
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}\nworker:\n{worker.log()[-3000:]}"
    lines = run.stdout.splitlines()
    assert len(lines) == 5, run.stdout
    pid = re.fullmatch(r"py-demo-(\d+) running", lines[1])
    assert pid, run.stdout
    ws_id = f"py-demo-{pid.group(1)}"
    assert lines[0]  # the daemon's version
    assert lines[2] == "0 hello"
    assert lines[3].startswith(f"added {ws_id}.example.test {{")
    assert lines[4] == "not_found"
    # It cleaned up after itself (the worker's host label would catch a leftover at the end).
    assert not _docker_cli(
        "ps", "-aq", "--filter", f"label=dockhand.host={worker.host_id}", "--filter", f"name={ws_id}"
    )
