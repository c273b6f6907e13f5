"""The README stays true: every setting is documented, every command is named."""

from __future__ import annotations

from pathlib import Path

from scripts.settings_table import rows
from worker.cli import COMMAND_MODULES
from worker.settings import Settings

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_lists_every_setting_with_its_env_name() -> None:
    text = README.read_text()
    missing = [env for env, _default, _meaning in rows(Settings, "FACESTREAM_") if env not in text]
    assert not missing, f"README lacks settings (run scripts/settings_table.py): {missing}"


def test_readme_names_every_cli_command() -> None:
    text = README.read_text()
    for name in COMMAND_MODULES:
        assert f"facestream {name}" in text, name
