"""The environment variable names `worker.settings.Settings` accepts (for deploy tests)."""

from __future__ import annotations

from pydantic import BaseModel

from worker.settings import Settings


def settings_env_keys() -> set[str]:
    """Every `FACESTREAM_*` name, nested with `__`, including whole sub-models (JSON)."""
    prefix = Settings.model_config.get("env_prefix", "")
    delimiter = Settings.model_config.get("env_nested_delimiter") or "__"
    keys: set[str] = set()

    def walk(model: type[BaseModel], path: str) -> None:
        for name, field in model.model_fields.items():
            key = f"{path}{delimiter}{name}" if path else name
            keys.add(f"{prefix}{key}".upper())
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                walk(annotation, key)

    walk(Settings, "")
    return keys
