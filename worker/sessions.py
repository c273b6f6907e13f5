"""Sessions: the name of one run of a stream, part of every event id and person key.

A run is exactly replayable when its source is finite (a file, a VOD URL): re-read after
a failover it yields the same frames, windows and track ids, so its session is the same
on every worker — derived from the assignments record that started it (topic, partition,
offset; the watcher keeps the earliest record of a run of identical values) and the
spec. A deliberate re-submit is a new record, so a new session: its events are new.

A live source never replays exactly: after a restart (stop + submit, a spec change, a
worker restart, a failover) its track ids restart at 1 and stream time near 0. So its
session adds a random nonce drawn at each start, and no id or person hash of an earlier
run can be reached again.
"""

from __future__ import annotations

import hashlib
import secrets

from worker.specs import StreamSpec

SESSION_HASH_CHARS = 12
NONCE_CHARS = 12


def new_nonce() -> str:
    """A random part for a live session (48 bits), drawn once per stream start."""
    return secrets.token_hex(NONCE_CHARS // 2)


def session_for(spec: StreamSpec, *, live: bool, nonce: str) -> str:
    """The session of a run of `spec`: deterministic for a finite source, with `nonce`
    for a live one. Characters: lowercase hex and '-' only."""
    digest = hashlib.sha256(f"{spec.origin}\x1f{spec.model_dump_json()}".encode()).hexdigest()[
        :SESSION_HASH_CHARS
    ]
    return f"{digest}-{nonce}" if live else digest
