"""Print every worker setting as a markdown table (env name, default, meaning) for the README."""

from __future__ import annotations

from pydantic import BaseModel

from worker.settings import Settings


def rows(model: type[BaseModel], prefix: str) -> list[tuple[str, str, str]]:
    """(env var, default, description) for every field, nested models flattened with `__`."""
    out: list[tuple[str, str, str]] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        env = f"{prefix}{name.upper()}"
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out.extend(rows(annotation, f"{env}__"))
            continue
        default = "(hostname)" if field.default_factory is not None else repr(field.default)
        out.append((env, default, field.description or ""))
    return out


def main() -> None:
    print("| setting (env) | default | meaning |")
    print("|---|---|---|")
    for env, default, description in rows(Settings, "FACESTREAM_"):
        print(f"| `{env}` | `{default}` | {description} |")


if __name__ == "__main__":
    main()
