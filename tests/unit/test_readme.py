"""README.md stays in step with the code: every setting and command type is documented."""

from __future__ import annotations

import re
from pathlib import Path

from dockhand.schemas import COMMAND_TYPES
from dockhand.worker.settings import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_in_the_settings_table() -> None:
    documented = set(re.findall(r"`(DOCKHAND_[A-Z_]+)`", README))
    missing = {f"DOCKHAND_{name.upper()}" for name in Settings.model_fields} - documented
    assert not missing, f"README settings table lacks {sorted(missing)}"


def test_documented_settings_exist() -> None:
    known = {f"DOCKHAND_{name.upper()}" for name in Settings.model_fields}
    table = README.split("## Settings", 1)[1]
    documented = set(re.findall(r"`(DOCKHAND_[A-Z_]+)`", table))
    assert documented <= known, f"README documents unknown settings {sorted(documented - known)}"


def test_every_command_type_is_listed() -> None:
    listed = set()
    for family, verbs in re.findall(r"`([a-z]+)\.([a-z_|]+)`", README):
        listed.update(f"{family}.{verb}" for verb in verbs.split("|"))
    assert listed >= COMMAND_TYPES, sorted(COMMAND_TYPES - listed)
