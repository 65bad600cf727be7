"""``python -m worker``: run the worker."""

from .cli import run

if __name__ == "__main__":
    run()
