"""What one `EventPublisher` round trip sends to Redis: each event through one Lua script
(deduplicated by id), each stream status as a hash. Pure: builds commands, runs nothing.

The script first checks `{p}:seen:{event_id}`; only an event not seen before is written:
the stream entry, the `{p}:seen` marker (`EX dedup_ttl_s`), the pub/sub message, the
person hash and (thumbnails on) the person's face JPEG. So a window redone after a
failover, or the same event published by two workers at once, shows up exactly once.
"""

from __future__ import annotations

import hashlib
import json

import redis
from redis.client import Pipeline

from worker.events import FaceEvent
from worker.redis_keys import RedisKeys
from worker.settings import RedisSettings
from worker.status import StreamState, StreamStatus

# KEYS: seen marker, events stream, person hash, thumbnail.
# ARGV: dedup ttl s, stream maxlen, live channel, event json, event id, stream id, track id,
#       task, frame wall time s, window end s, person ttl s, session, labels json,
#       thumbnail jpeg ('' = none).
# Returns 1 when written, 0 when the event id was already published.
# Order matters: the seen marker is set only after the stream entry exists (a failing
# XADD leaves nothing behind and the batch is retried), and the person hash, a
# convenience view, is updated under pcall so an odd key there cannot lose the event.
PUBLISH_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*',
  'event', ARGV[4], 'event_id', ARGV[5], 'stream_id', ARGV[6], 'track_id', ARGV[7],
  'task', ARGV[8], 'session', ARGV[12])
redis.call('SET', KEYS[1], '1', 'EX', ARGV[1])
redis.call('PUBLISH', ARGV[3], ARGV[4])
local function update_person()
  -- The newest window per task wins, even when windows finish out of order.
  local previous = redis.call('HGET', KEYS[3], ARGV[8])
  if (not previous) or cjson.decode(previous)['window_end_s'] <= tonumber(ARGV[10]) then
    redis.call('HSET', KEYS[3], ARGV[8], ARGV[4])
  end
  local last_seen = tonumber(redis.call('HGET', KEYS[3], 'last_seen_s') or '0')
  if tonumber(ARGV[9]) > last_seen then
    redis.call('HSET', KEYS[3], 'last_seen_s', ARGV[9])
  end
  redis.call('HSET', KEYS[3], 'stream_id', ARGV[6], 'session', ARGV[12],
    'track_id', ARGV[7], 'labels', ARGV[13])
  redis.call('EXPIRE', KEYS[3], ARGV[11])
end
local function update_thumbnail()
  if ARGV[14] ~= '' then
    redis.call('SET', KEYS[4], ARGV[14], 'EX', ARGV[11])
  else
    redis.call('EXPIRE', KEYS[4], ARGV[11])  -- lives as long as the person hash
  end
end
pcall(update_person)
pcall(update_thumbnail)
return 1
"""
PUBLISH_LUA_SHA = hashlib.sha1(PUBLISH_LUA.encode()).hexdigest()


def queue_event(
    pipe: Pipeline,
    keys: RedisKeys,
    settings: RedisSettings,
    event: FaceEvent,
) -> None:
    """Add one event's script call (EVALSHA) to `pipe`; its result is 1 (written) or 0."""
    thumbnail = (event.thumbnail_jpeg or b"") if settings.thumbnails else b""
    pipe.evalsha(
        PUBLISH_LUA_SHA,
        4,
        keys.seen(event.event_id),
        keys.events,
        keys.person(event.stream_id, event.session, event.track_id),
        keys.thumbnail(event.stream_id, event.session, event.track_id),
        settings.dedup_ttl_s,
        settings.events_maxlen,
        keys.live,
        event.model_dump_json(),
        event.event_id,
        event.stream_id,
        event.track_id,
        str(event.task),
        repr(event.frame_wall_time_s),
        repr(event.window_end_s),
        settings.person_ttl_s,
        event.session,
        json.dumps(event.labels, ensure_ascii=False, sort_keys=True),
        thumbnail,
    )


RELEASE_LUA = """
-- A worker letting a stream go writes `released` only while the status hash is still its
-- own (or gone): the stream's next owner may already have written (a one-shot `error`,
-- say), and a late `released` must not overwrite that.
-- KEYS[1] status hash; ARGV[1] worker id, ARGV[2] TTL, ARGV[3..] field, value, ...
local owner = redis.call('HGET', KEYS[1], 'worker_id')
if owner and owner ~= '' and owner ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""


def queue_status(
    pipe: Pipeline,
    keys: RedisKeys,
    settings: RedisSettings,
    stream_id: str,
    status: StreamStatus | None,
) -> None:
    """Add one stream's status write (or its removal, `status=None`) to `pipe`; a
    `released` status is written only over this worker's own (`RELEASE_LUA`)."""
    if status is None:
        pipe.delete(keys.stream(stream_id))
        pipe.srem(keys.streams, stream_id)
        return
    if status.state is StreamState.RELEASED:
        fields = [item for pair in status.to_hash().items() for item in pair]
        pipe.eval(
            RELEASE_LUA, 1, keys.stream(stream_id), status.worker_id, settings.status_ttl_s, *fields
        )
    else:
        pipe.hset(keys.stream(stream_id), mapping=status.to_hash())
        pipe.expire(keys.stream(stream_id), settings.status_ttl_s)
    pipe.sadd(keys.streams, stream_id)
    pipe.expire(keys.streams, settings.status_ttl_s)


STREAMS_PRUNE_BATCH = 500
"""Members of `{p}:streams` checked per prune round (bounded work per call)."""


def prune_streams_set(client: redis.Redis, keys: RedisKeys, cursor: int) -> int:
    """Remove from `{p}:streams` up to `STREAMS_PRUNE_BATCH` ids whose status hash has
    expired (every worker refreshes the set's TTL, so without this it only ever grows with
    stream-id churn); returns the SSCAN cursor to continue from (0: a full pass ended)."""
    cursor, members = client.sscan(keys.streams, cursor, count=STREAMS_PRUNE_BATCH)
    if not members:
        return int(cursor)
    pipe = client.pipeline(transaction=False)
    for member in members:  # bytes from the binary client: a foreign id may not be UTF-8
        pipe.exists(keys.stream_raw(member) if isinstance(member, bytes) else keys.stream(member))
    gone = [member for member, exists in zip(members, pipe.execute(), strict=True) if not exists]
    if gone:
        client.srem(keys.streams, *gone)
    return int(cursor)
