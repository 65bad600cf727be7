"""The worker's own Python work per command, without sockets: the real dispatcher over fakes.

The real :class:`~dockhand.worker.dispatch.Dispatcher` with the real result store (a SQLite
journal in a temporary directory) and the real :class:`~dockhand.worker.docker.DockerOps` run
over the test doubles of ``tests/fakes`` (an in-process Docker client, a publisher that confirms
at once, deliveries that record their ack). Each round submits ``--commands`` ``workspace.inspect``
spread over 64 workspaces, 64 at a time, and reads the process's CPU time (user + system) and
the cycle collector's share (``gc.callbacks``). What is left out is exactly the I/O that the
floor worker (bench/peers/floor.py) pays as well: sockets, frames, HTTP, the broker.

With ``--compare DIR`` the same rounds run, alternating, against another checkout (``git
worktree add /tmp/before <rev>``), each side in a subprocess of its own; the table gives both
sides and the ratio of the pooled figures. The run's own process applies the worker's
``tune_gc()`` when the checkout has one, as ``python -m dockhand.worker`` does.

Run: .venv/bin/python bench/dispatch_cost.py [--commands 3000] [--rounds 5] [--compare DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def measure(source: Path, commands: int) -> dict[str, float]:
    """One round in this process, against the checkout at ``source`` (already on sys.path)."""
    import stamina

    from dockhand.worker import app as worker_app
    from dockhand.worker.dispatch import Dispatcher
    from dockhand.worker.docker import DockerOps
    from dockhand.worker.labels import Labels
    from dockhand.worker.policy import Policy
    from dockhand.worker.settings import Settings
    from dockhand.worker.topology import Topology
    from tests.fakes import FakeDockerClient, FakeMessage, FakePublisher
    from tests.fakes.docker_client import Box

    host, names = "host-a", Labels("dockhand", "dockhand")
    tune = getattr(worker_app, "tune_gc", None)
    if tune is not None:
        tune()
    collected = {"s": 0.0, "n": 0, "full": 0}
    began: dict[str, float] = {}

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            began["t"] = time.process_time()
            return
        collected["s"] += time.process_time() - began["t"]
        collected["n"] += 1
        collected["full"] += info["generation"] == 2

    async def run() -> dict[str, float]:
        state = Path(tempfile.mkdtemp(prefix="dhbench-dispatch-"))
        settings = Settings(host_id=host, worker_id=f"{host}-b", docker_host=None, state_dir=state)
        labels = {"dockhand.managed": "true", "dockhand.host": host}
        boxes = [
            Box(id=f"{i:064x}", name=f"dockhand-w{i}", labels={**labels, "dockhand.workspace.id": f"w{i}"})
            for i in range(64)
        ]
        dispatcher = Dispatcher(settings, Topology(settings), FakePublisher())  # type: ignore[arg-type]
        dispatcher.ops = DockerOps(FakeDockerClient(*boxes), settings, names, Policy(settings, names))  # type: ignore[arg-type]

        async def batch(n: int, first: int) -> int:
            messages = []
            for i in range(n):
                body = {
                    "command_id": f"c{first + i}",
                    "type": "workspace.inspect",
                    "payload": {"workspace_id": f"w{i % 64}"},
                }
                message = FakeMessage(body, f"{host}.workspace.inspect", reply_to="r", correlation_id=f"k{i}")
                dispatcher.submit(message.body, message)  # type: ignore[arg-type]
                messages.append(message)
                if len(messages) % 64 == 0:
                    await asyncio.sleep(0)
            while dispatcher.lanes.tasks:
                await asyncio.wait(set(dispatcher.lanes.tasks))
            return sum(1 for m in messages if m.settled == ["ack"])

        await batch(500, 0)  # warm: imports, caches, the journal's first pages
        gc.callbacks.append(on_gc)
        cpu = time.process_time()
        acked = await batch(commands, 10**6)
        cpu = time.process_time() - cpu
        gc.callbacks.remove(on_gc)
        dispatcher.store.close()
        if acked != commands:
            raise RuntimeError(f"only {acked} of {commands} commands were acked")
        return {
            "us_per_command": cpu / commands * 1e6,
            "gc_us_per_command": collected["s"] / commands * 1e6,
            "collections": collected["n"],
            "full": collected["full"],
        }

    with stamina.set_testing(False):
        return asyncio.run(run())


def child(source: Path, commands: int) -> dict[str, float]:
    """One round in a fresh interpreter whose imports come from ``source``."""
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); sys.path.insert(1, sys.argv[2]);"
        "from dispatch_cost import measure; from pathlib import Path;"
        "print(json.dumps(measure(Path(sys.argv[1]), int(sys.argv[3]))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(source), str(Path(__file__).parent), str(commands)],
        cwd=source,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if out.returncode != 0:
        raise RuntimeError(f"round against {source} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--compare", type=Path, help="another checkout to measure beside this one")
    args = parser.parse_args()
    sides = {"this": REPO, **({"compare": args.compare.resolve()} if args.compare else {})}
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
    for r in range(args.rounds):
        order = list(sides.items()) if r % 2 == 0 else list(sides.items())[::-1]
        for name, source in order:
            figures = child(source, args.commands)
            rounds[name].append(figures)
            cost, of_gc = figures["us_per_command"], figures["gc_us_per_command"]
            print(f"round {r + 1} {name}: {cost:.0f} us/command, GC {of_gc:.0f}", file=sys.stderr)

    def pooled(name: str, key: str) -> float:
        return sum(f[key] for f in rounds[name]) / len(rounds[name])

    print(f"dispatch cost: {args.commands} workspace.inspect x {args.rounds} rounds, real dispatcher over fakes")
    print(f"{'side':<8} {'checkout':<40} {'CPU us/command':>15} {'of it GC':>9} {'GCs':>6} {'full':>5}")
    for name, source in sides.items():
        cost, of_gc = pooled(name, "us_per_command"), pooled(name, "gc_us_per_command")
        print(
            f"{name:<8} {source!s:<40} {cost:>15.0f} {of_gc:>9.0f}"
            f" {pooled(name, 'collections'):>6.0f} {pooled(name, 'full'):>5.1f}"
        )
    if args.compare:
        ratios = [
            a["us_per_command"] / b["us_per_command"] for a, b in zip(rounds["this"], rounds["compare"], strict=True)
        ]
        print(
            f"this / compare: {pooled('this', 'us_per_command') / pooled('compare', 'us_per_command'):.2f}x"
            f" (rounds {min(ratios):.2f}-{max(ratios):.2f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
