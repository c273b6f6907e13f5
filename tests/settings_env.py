"""The environment variable names `worker.settings.Settings` accepts (for deploy tests)."""

from __future__ import annotations

from worker.settings import setting_variable_names


def settings_env_keys() -> set[str]:
    """Every `FACESTREAM_*` name, nested with `__`, including whole sub-models (JSON)."""
    return set(setting_variable_names())
