"""Records of the assignments topic as values: `parse_record` turns one Kafka record into
`(stream_id, StreamSpec | None)` or an `InvalidRecordError` saying why, and `dlq_payload`
is the JSON written to the DLQ topic for a bad one. Pure functions: no Kafka client here
(the consumer thread is `worker.watcher`).
"""

from __future__ import annotations

import base64
import json
from typing import Any

from pydantic import ValidationError

from ingest.urls import UnsupportedURLError, check_source_url, redact_record_value, scrub_secrets
from worker.specs import STREAM_ID_RULE, StreamSpec, is_stream_id, validation_problems

DLQ_SCHEMA_VERSION = 1
# A DLQ record must stay under the broker's 1 MB default even when JSON escapes it.
DLQ_MAX_VALUE_BYTES = 64 * 1024
DLQ_MAX_KEY_BYTES = 1024
MAX_ERROR_CHARS = 2000


class InvalidRecordError(ValueError):
    """A record of the assignments topic that is not a valid stream assignment."""

    def __init__(self, stream_id: str | None, reason: str) -> None:
        super().__init__(reason)
        self.stream_id = stream_id
        self.reason = reason[:MAX_ERROR_CHARS]


def parse_record(
    key: bytes | None, value: bytes | None, *, allow_file: bool
) -> tuple[str, StreamSpec | None]:
    """`(stream_id, spec)` of one assignments record (spec None = tombstone), or raise
    `InvalidRecordError` saying why (never with credentials in it)."""
    if key is None:
        raise InvalidRecordError(None, "record has no key; the key must be the stream_id")
    try:
        stream_id = key.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRecordError(None, "key is not UTF-8; the key must be the stream_id") from None
    if not is_stream_id(stream_id):
        raise InvalidRecordError(None, f"key is not a valid stream_id ({STREAM_ID_RULE})")
    if value is None:
        return stream_id, None
    try:
        document = json.loads(value.decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidRecordError(stream_id, "value is not UTF-8 JSON") from None
    except json.JSONDecodeError as error:
        raise InvalidRecordError(
            stream_id, f"value is not JSON: {error.msg} at {error.pos}"
        ) from None
    except (ValueError, RecursionError) as error:
        raise InvalidRecordError(
            stream_id, f"value is not usable JSON: {type(error).__name__}"
        ) from None
    if not isinstance(document, dict):
        raise InvalidRecordError(stream_id, "value must be a JSON object (a StreamSpec)")
    try:
        spec = StreamSpec.model_validate(document)
    except ValidationError as error:
        raise InvalidRecordError(
            stream_id, f"invalid StreamSpec: {validation_problems(error)}"
        ) from None
    if spec.stream_id != stream_id:
        raise InvalidRecordError(
            stream_id, f"key {stream_id!r} differs from stream_id {spec.stream_id!r} in the value"
        )
    try:
        check_source_url(spec.url, allow_file=allow_file)
    except UnsupportedURLError as error:
        raise InvalidRecordError(stream_id, str(error)) from None
    return stream_id, spec


def _text_or_b64(raw: bytes | None, limit: int, name: str) -> dict[str, Any]:
    """`{name: text}` when UTF-8, else `{name: None, name_b64: ...}`; cut at `limit` bytes."""
    if raw is None:
        return {name: None}
    cut = raw[:limit]
    fields: dict[str, Any] = {}
    if len(raw) > limit:
        fields[f"{name}_bytes"] = len(raw)
        fields[f"{name}_truncated"] = True
    try:
        raw.decode("utf-8")
        fields[name] = cut.decode("utf-8", errors="ignore")
    except UnicodeDecodeError:
        fields[name] = None
        fields[f"{name}_b64"] = base64.b64encode(cut).decode("ascii")
    return fields


def dlq_payload(
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    reason: str,
    worker_id: str,
    time_s: float,
) -> bytes:
    """The JSON value written to the DLQ topic for one bad record, credentials redacted
    (the key, the value and the reason)."""
    document = {
        "schema_version": DLQ_SCHEMA_VERSION,
        **_text_or_b64(redact_record_value(key), DLQ_MAX_KEY_BYTES, "key"),
        **_text_or_b64(redact_record_value(value), DLQ_MAX_VALUE_BYTES, "value"),
        "error": scrub_secrets(reason),
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "worker_id": worker_id,
        "time_s": time_s,
    }
    return json.dumps(document, ensure_ascii=False).encode("utf-8")
