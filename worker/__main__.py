"""``python -m dockhand.worker``: run the worker (as ``dockhand run`` does)."""

from dockhand.cli import run

if __name__ == "__main__":
    run()
