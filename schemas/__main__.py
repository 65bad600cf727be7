"""``python -m dockhand.schemas [DIR]``: write the JSON Schema files (default: schemas/json/)."""

import sys
from pathlib import Path

from .export import SCHEMA_DIR, write

if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else SCHEMA_DIR
    for path in write(target):
        print(path)
