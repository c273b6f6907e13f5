"""`AssignmentWatcher` against a real Kafka 0.9.0.1 broker: fold, live updates, group
rebalances (close and SIGKILL), malformed records to the DLQ, tombstones for done streams."""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from pydantic import ValidationError

from tests.services.kafka_broker import (
    KafkaTestBroker,
    KafkaTopics,
    free_port,
)
from worker.logs import configure_logging
from worker.records import InvalidRecordError, dlq_payload, parse_record
from worker.settings import KafkaSettings
from worker.specs import StreamSpec
from worker.watcher import AssignmentWatcher, DesiredChange, WatcherState

pytestmark = [pytest.mark.services, pytest.mark.timeout(120)]

REPO_ROOT = Path(__file__).resolve().parent.parent
SESSION_TIMEOUT_MS = 6000


@pytest.fixture(autouse=True)
def _structlog_to_current_stdout() -> Iterator[None]:
    """Other tests' commands may leave structlog writing into their closed capture; the
    watcher threads here must log somewhere that exists."""
    saved = structlog.get_config()
    structlog.reset_defaults()
    yield
    structlog.configure(**saved)


def settings_for(topics: KafkaTopics) -> KafkaSettings:
    """Watcher settings for a test's private topics, with a short session timeout."""
    return KafkaSettings(
        bootstrap_servers=topics.broker.bootstrap_servers,
        topic=topics.topic,
        dlq_topic=topics.dlq_topic,
        group_id=topics.group_id,
        api_version="0.9",
        session_timeout_ms=SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=500,
    )


def spec_json(stream_id: str, url: str | None = None, **fields: Any) -> str:
    """A valid StreamSpec value."""
    url = url or f"rtsp://cam.example/{stream_id}"
    return json.dumps({"schema_version": 1, "stream_id": stream_id, "url": url, **fields})


class Recorder:
    """Collects a watcher's callbacks and mirrors its desired set like a supervisor would."""

    def __init__(self) -> None:
        self.changes: list[DesiredChange] = []
        self.invalid: list[tuple[str | None, str]] = []
        self.mirror: dict[str, StreamSpec] = {}
        self._cond = threading.Condition()

    def on_change(self, change: DesiredChange) -> None:
        with self._cond:
            self.changes.append(change)
            for stream_id in change.stopped:
                self.mirror.pop(stream_id)
            for stream_id, spec in change.started.items():
                assert stream_id not in self.mirror, f"{stream_id} started twice"
                self.mirror[stream_id] = spec
            for stream_id, spec in change.updated.items():
                assert stream_id in self.mirror, f"{stream_id} updated before started"
                self.mirror[stream_id] = spec
            self._cond.notify_all()

    def on_invalid(self, stream_id: str | None, reason: str) -> None:
        with self._cond:
            self.invalid.append((stream_id, reason))
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
        with self._cond:
            if not self._cond.wait_for(predicate, timeout=timeout_s):
                pytest.fail(f"timed out after {timeout_s} s waiting for {what}: {self.mirror}")

    def ids(self) -> set[str]:
        with self._cond:
            return set(self.mirror)


def start_watcher(
    settings: KafkaSettings, worker_id: str = "w1"
) -> tuple[AssignmentWatcher, Recorder]:
    recorder = Recorder()
    watcher = AssignmentWatcher(
        settings, worker_id=worker_id, on_change=recorder.on_change, on_invalid=recorder.on_invalid
    )
    watcher.start()
    return watcher, recorder


def wait_live(watcher: AssignmentWatcher, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while watcher.status().state is not WatcherState.LIVE:
        assert watcher.is_alive(), watcher.status()
        if time.monotonic() > deadline:
            pytest.fail(f"watcher not live after {timeout_s} s: {watcher.status()}")
        time.sleep(0.05)


def test_fold_keeps_latest_value_per_key_and_forgets_tombstones(kafka_topics: KafkaTopics) -> None:
    kafka_topics.broker.produce(
        kafka_topics.topic,
        [
            ("cam-a", spec_json("cam-a")),
            ("cam-b", spec_json("cam-b")),
            ("cam-a", spec_json("cam-a", tasks=["age", "emotion"])),
            ("cam-c", spec_json("cam-c")),
            ("cam-c", None),
            ("cam-b", spec_json("cam-b", labels={"site": "lobby"})),
        ],
        partition=1,
    )
    watcher, recorder = start_watcher(settings_for(kafka_topics))
    try:
        wait_live(watcher)
        recorder.wait_for(lambda: len(recorder.mirror) == 2, 10, "two streams")
        assert recorder.ids() == {"cam-a", "cam-b"}
        assert [t.value for t in recorder.mirror["cam-a"].tasks] == ["age", "emotion"]
        assert recorder.mirror["cam-b"].labels == {"site": "lobby"}
        # The fold reports the end state once: no start of cam-c, no stop, no update.
        assert len(recorder.changes) == 1
        assert set(recorder.changes[0].started) == {"cam-a", "cam-b"}
        assert watcher.desired() == recorder.mirror
        assert watcher.partition_of("cam-a") == 1
        assert recorder.invalid == []
    finally:
        watcher.stop()
    assert recorder.mirror == {}, "stop() reports every stream as stopped"
    assert not watcher.is_alive()


def test_live_records_start_update_and_stop_streams(kafka_topics: KafkaTopics) -> None:
    watcher, recorder = start_watcher(settings_for(kafka_topics))
    broker = kafka_topics.broker
    try:
        wait_live(watcher)
        assert recorder.changes == []
        broker.produce(kafka_topics.topic, [("live-1", spec_json("live-1"))])
        recorder.wait_for(lambda: "live-1" in recorder.mirror, 10, "live-1 started")
        broker.produce(kafka_topics.topic, [("live-1", spec_json("live-1", detection_fps=2.5))])
        recorder.wait_for(
            lambda: recorder.mirror["live-1"].detection_fps == 2.5, 10, "live-1 updated"
        )
        assert any("live-1" in change.updated for change in recorder.changes)
        # The same value again is no change at all.
        count = len(recorder.changes)
        broker.produce(kafka_topics.topic, [("live-1", spec_json("live-1", detection_fps=2.5))])
        broker.produce(kafka_topics.topic, [("live-1", None)])
        recorder.wait_for(lambda: "live-1" not in recorder.mirror, 10, "live-1 stopped")
        assert len(recorder.changes) == count + 1
        assert watcher.desired() == {}
    finally:
        watcher.stop()


def produce_one_per_partition(topics: KafkaTopics, names: list[str]) -> None:
    for partition, name in enumerate(names):
        topics.broker.produce(topics.topic, [(name, spec_json(name))], partition=partition)


def wait_split(first: Recorder, second: Recorder, expected: set[str]) -> None:
    def split() -> bool:
        a, b = set(first.mirror), set(second.mirror)
        return bool(a) and bool(b) and not (a & b) and a | b == expected

    deadline = time.monotonic() + 30
    while not split():
        if time.monotonic() > deadline:
            pytest.fail(f"no split: {first.mirror.keys()} / {second.mirror.keys()}")
        time.sleep(0.05)


def test_two_watchers_split_the_streams_and_survivor_takes_all_on_close(
    kafka_topics: KafkaTopics,
) -> None:
    names = [f"split-{i}" for i in range(4)]
    produce_one_per_partition(kafka_topics, names)
    for partition in range(4):
        bad = [(f"bad-{partition}", "{not json")]
        kafka_topics.broker.produce(kafka_topics.topic, bad, partition=partition)
    settings = settings_for(kafka_topics)
    first, first_seen = start_watcher(settings, "w1")
    second = None
    try:
        first_seen.wait_for(lambda: len(first_seen.mirror) == 4, 30, "all four on w1")
        assert len(kafka_topics.broker.consume(kafka_topics.dlq_topic, min_count=4)) == 4
        second, second_seen = start_watcher(settings, "w2")
        wait_split(first_seen, second_seen, set(names))
        assert len(first.status().partitions) == 2
        assert len(second.status().partitions) == 2

        closed_at = time.monotonic()
        second.stop()
        assert second_seen.mirror == {}
        first_seen.wait_for(lambda: len(first_seen.mirror) == 4, 20, "all four back on w1")
        print(f"survivor took over {time.monotonic() - closed_at:.2f} s after a clean close")
        assert first_seen.ids() == set(names)
        # Each refold re-reports the bad records (statuses) but the DLQ holds them once:
        # the committed offsets say they were checked already.
        assert len(first_seen.invalid) >= 8
        time.sleep(1.0)
        assert len(kafka_topics.broker.consume(kafka_topics.dlq_topic)) == 4
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_stream_moves_to_survivor_when_worker_process_is_killed(kafka_topics: KafkaTopics) -> None:
    names = [f"kill-{i}" for i in range(4)]
    produce_one_per_partition(kafka_topics, names)
    settings = settings_for(kafka_topics)
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.test_assignments", settings.model_dump_json()],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    child_ids: set[str] = set()

    def read_child() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            if line.startswith("IDS "):
                child_ids.clear()
                child_ids.update(json.loads(line[4:]))

    reader = threading.Thread(target=read_child, name="child-reader", daemon=True)
    reader.start()
    survivor, seen = start_watcher(settings, "survivor")
    try:
        deadline = time.monotonic() + 40
        while not (
            child_ids
            and seen.ids()
            and not (seen.ids() & child_ids)
            and seen.ids() | child_ids == set(names)
        ):
            assert child.poll() is None, "child watcher exited"
            if time.monotonic() > deadline:
                pytest.fail(f"no split: child {child_ids} / survivor {seen.ids()}")
            time.sleep(0.05)

        killed_at = time.monotonic()
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        seen.wait_for(
            lambda: len(seen.mirror) == 4,
            SESSION_TIMEOUT_MS / 1000 + 15,
            "all four on the survivor",
        )
        took_s = time.monotonic() - killed_at
        print(f"survivor took over {took_s:.2f} s after SIGKILL (session {SESSION_TIMEOUT_MS} ms)")
        assert seen.ids() == set(names)
    finally:
        survivor.stop()
        if child.poll() is None:
            child.kill()
            child.wait(10)


HOSTILE_URLS = [
    "concat:/etc/passwd|/etc/shadow",
    "file:///etc/passwd",
    "/etc/passwd",
    "pipe:0",
    "data:text/plain;base64,aGk=",
    "subfile:,,start,0,end,0,:/etc/passwd",
    "tcp://10.0.0.1:80",
    "udp://10.0.0.1:1234",
    "rtsp://",
    "http://bad host/x",
    "rtsp://user:secret@cam/\x00x",
    "gopher://x/",
]


def malformed_record(rng: random.Random, index: int) -> tuple[bytes | str | None, bytes | str]:
    """One of many ways an assignments record can be wrong (all keys unique)."""
    sid = f"bad-{index}"
    kind = index % 16
    if kind == 0:
        return sid, spec_json(sid)[: rng.randint(1, 30)]
    if kind == 1:
        return sid, rng.choice(["[1, 2]", '"a string"', "42", "null", "true", ""])
    if kind == 2:
        field, value = rng.choice(
            [
                ("tasks", "emotion"),
                ("tasks", ["smile"]),
                ("tasks", []),
                ("detection_fps", "fast"),
                ("detection_fps", -1),
                ("max_faces", 0),
                ("labels", {"a": 1}),
                ("labels", ["x"]),
                ("window_s", 1000),
                ("schema_version", 2),
                ("url", 7),
            ]
        )
        return sid, spec_json(sid, **{field: value})
    if kind == 3:
        return sid, spec_json(sid, **{rng.choice(["camera", "fps", "Tasks", "extra"]): 1})
    if kind == 4:
        return sid, spec_json(sid, labels={"big": "x" * rng.randint(2001, 200_000)})
    if kind == 5:
        return sid, spec_json(sid, url="rtsp://cam/" + "a" * 5000)
    if kind == 6:
        return sid, b"\xff\xfe" + rng.randbytes(rng.randint(0, 300))
    if kind == 7:
        return b"\xff" + rng.randbytes(8), spec_json(sid)
    if kind == 8:  # (compacted topics refuse records without a key: no such case here)
        return f"{sid}-" + "k" * 300, spec_json(sid)
    if kind == 9:
        return sid, spec_json(f"other-{index}")
    if kind == 10:
        return sid, spec_json(sid, url=rng.choice(HOSTILE_URLS))
    if kind == 11:
        return sid, "[" * rng.randint(5000, 100_000)
    if kind == 12:
        return f"has space {index}", spec_json(sid)
    if kind == 13:
        return sid, json.dumps({"stream_id": sid})
    if kind == 14:
        return sid, spec_json(sid, url="file:///videos/x.mp4")
    return sid, f'{{"stream_id": "{sid}", "url": "rtsp://x/", "detection_fps": 1e999999}}'


def test_malformed_records_go_to_the_dlq_and_valid_ones_still_apply(
    kafka_topics: KafkaTopics,
) -> None:
    rng = random.Random(20261126)
    broker = kafka_topics.broker
    bad = [malformed_record(rng, i) for i in range(200)]
    valid_ids: list[str] = []
    bad_positions: set[tuple[int, int]] = set()

    def produce_mix(bad_part: list, prefix: str) -> None:
        records: list[tuple[Any, Any]] = []
        for i, record in enumerate(bad_part):
            records.append(record)
            if i % 10 == 0:
                sid = f"{prefix}-good-{i}"
                valid_ids.append(sid)
                records.append((sid, spec_json(sid)))
        where = broker.produce(kafka_topics.topic, records)
        bad_positions.update(w for w, r in zip(where, records, strict=True) if r in bad_part)

    produce_mix(bad[:100], "before")
    watcher, recorder = start_watcher(settings_for(kafka_topics))
    try:
        wait_live(watcher)
        produce_mix(bad[100:], "after")
        recorder.wait_for(lambda: len(recorder.invalid) >= 200, 30, "200 invalid reports")
        recorder.wait_for(lambda: recorder.ids() == set(valid_ids), 10, "every valid stream")
        dlq = broker.consume(kafka_topics.dlq_topic, min_count=200, timeout_s=30)
        time.sleep(1.0)  # nothing more should arrive
        assert watcher.is_alive()
        status = watcher.status()
    finally:
        watcher.stop()
    dlq += broker.consume(kafka_topics.dlq_topic)[len(dlq) :]
    assert len(dlq) == 200
    entries = [json.loads(record.value) for record in dlq]
    assert {(e["partition"], e["offset"]) for e in entries} == bad_positions
    for entry in entries:
        assert entry["error"], entry
        assert entry["topic"] == kafka_topics.topic
        assert entry["worker_id"] == "w1"
        assert entry["time_s"] > 1.7e9
        assert entry["value"] is not None or "value_b64" in entry
        assert "secret" not in entry["error"]
    assert status.invalid_records == 200
    assert status.dlq_records == 200 and status.dlq_failures == 0
    assert len(recorder.invalid) == 200
    keyed = [sid for sid, _ in recorder.invalid if sid is not None]
    assert len(keyed) == len(set(keyed))
    assert all(sid.startswith("bad-") for sid in keyed)
    assert not recorder.ids() & {sid for sid, _ in recorder.invalid if sid}
    reasons = " | ".join(reason for _, reason in recorder.invalid)
    for expected in (
        "not JSON",
        "JSON object",
        "not UTF-8",
        "valid stream_id",
        "differs from",
        "refusing",
        "extra",
        "at most",
    ):
        assert expected in reasons


def test_mark_done_writes_a_tombstone_and_stops_the_stream(kafka_topics: KafkaTopics) -> None:
    kafka_topics.broker.produce(kafka_topics.topic, [("vod-1", spec_json("vod-1"))])
    watcher, recorder = start_watcher(settings_for(kafka_topics))
    try:
        recorder.wait_for(lambda: "vod-1" in recorder.mirror, 30, "vod-1 started")
        assert watcher.mark_done("vod-1")
        recorder.wait_for(lambda: "vod-1" not in recorder.mirror, 10, "vod-1 stopped")
    finally:
        watcher.stop()
    records = kafka_topics.broker.consume(kafka_topics.topic, min_count=2)
    assert [(r.key, r.value) for r in records][-1] == (b"vod-1", None)


def test_watcher_keeps_retrying_while_the_broker_is_away(kafka_home: Path, tmp_path: Path) -> None:
    port = free_port()
    settings = KafkaSettings(
        bootstrap_servers=f"127.0.0.1:{port}",
        topic="late-streams",
        dlq_topic="late-dlq",
        group_id="late-group",
        api_version="0.9",
        session_timeout_ms=SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=500,
    )
    watcher, recorder = start_watcher(settings)
    # No auto-creation: the watcher's metadata requests must not create the topic first.
    broker = KafkaTestBroker(
        tmp_path / "late", kafka_home=kafka_home, port=port, auto_create_topics=False
    )
    try:
        time.sleep(1.0)
        assert watcher.is_alive()
        assert watcher.status().state is WatcherState.CONNECTING
        broker.start()
        broker.create_topic("late-streams", 2)
        broker.produce("late-streams", [("late-1", spec_json("late-1"))])
        recorder.wait_for(lambda: "late-1" in recorder.mirror, 40, "late-1 started")

        broker.stop_kafka()  # an outage later on: streams keep running, the watcher waits
        time.sleep(1.0)
        assert watcher.is_alive()
        assert recorder.ids() == {"late-1"}
        broker.start_kafka()
        broker.produce("late-streams", [("late-2", spec_json("late-2"))])
        recorder.wait_for(lambda: "late-2" in recorder.mirror, 40, "late-2 started")
        assert recorder.ids() == {"late-1", "late-2"}
    finally:
        watcher.stop()
        broker.stop()
    assert not watcher.is_alive()


def test_parse_record_reads_a_spec_and_a_tombstone() -> None:
    stream_id, spec = parse_record(b"cam-1", spec_json("cam-1").encode(), allow_file=False)
    assert stream_id == "cam-1" and spec is not None and spec.url == "rtsp://cam.example/cam-1"
    assert parse_record(b"cam-1", None, allow_file=False) == ("cam-1", None)
    path_spec = spec_json("f", url="/videos/a.mp4").encode()
    assert parse_record(b"f", path_spec, allow_file=True)[1] is not None


@pytest.mark.parametrize("key", [b"cam-1\n", b"cam 1", b"", b"c" * 201])
def test_a_key_is_refused_unless_all_of_it_is_a_stream_id(key: bytes) -> None:
    with pytest.raises(InvalidRecordError, match="not a valid stream_id"):
        parse_record(key, None, allow_file=False)  # a tombstone too: it would name a status key
    with pytest.raises(ValidationError):
        StreamSpec(stream_id=key.decode(), url="rtsp://cam.example/a")


@pytest.mark.parametrize(
    "url",
    [
        "concat:rtsp://user:hunter2@cam/a|/etc/passwd",
        "rtsp://user:hunter2@cam/" + "a" * 5000,
        "rtsp://user:hunter2@cam/a b",
    ],
)
def test_invalid_record_reasons_never_carry_credentials(url: str) -> None:
    with pytest.raises(InvalidRecordError) as caught:
        parse_record(b"cam-1", spec_json("cam-1", url=url).encode(), allow_file=False)
    assert caught.value.stream_id == "cam-1"
    assert "hunter2" not in caught.value.reason
    assert len(caught.value.reason) <= 2000


def test_dlq_payload_keeps_binary_as_base64_and_cuts_huge_values() -> None:
    where = {"topic": "t", "partition": 3, "offset": 17, "worker_id": "w", "time_s": 5.0}
    payload = dlq_payload(key=b"\xffk", value=b"\xfe\x00", reason="not UTF-8", **where)
    entry = json.loads(payload)
    assert entry["key"] is None and base64.b64decode(entry["key_b64"]) == b"\xffk"
    assert entry["value"] is None and base64.b64decode(entry["value_b64"]) == b"\xfe\x00"
    assert (entry["partition"], entry["offset"], entry["topic"]) == (3, 17, "t")
    assert entry["error"] == "not UTF-8" and entry["time_s"] == 5.0
    payload = dlq_payload(key=b"k", value=b"\x01" * 900_000, reason="too big", **where)
    assert len(payload) < 1_000_000  # fits the broker's default message size
    entry = json.loads(payload)
    assert entry["value_truncated"] is True and entry["value_bytes"] == 900_000


class _CommitRecorder:
    """Stands in for the consumer in `_commit`: keeps the offsets it is asked to commit."""

    def __init__(self) -> None:
        self.offsets: dict[Any, int] = {}

    def commit_async(self, offsets: dict, callback: Any = None) -> None:
        self.offsets = {tp: meta.offset for tp, meta in offsets.items()}


def test_commit_never_lowers_the_checked_offset_nor_passes_a_failed_dlq_write() -> None:
    from collections import namedtuple

    from kafka import TopicPartition

    from worker.desired import ChangeLog as _ChangeLog

    Record = namedtuple("Record", "topic partition offset key value")
    tp = TopicPartition("streams", 0)
    watcher = AssignmentWatcher(
        KafkaSettings(topic="streams"), worker_id="w1", on_change=print, on_invalid=print
    )
    watcher._owned = {tp}
    watcher._offsets.checked_below[tp] = (
        1000  # committed by the previous owner after its DLQ writes
    )
    consumer = _CommitRecorder()
    # A refold rereads from 0: committing its position would make the next owner send
    # records 11..999 to the DLQ a second time.
    watcher._apply(tp, Record("streams", 0, 10, b"a", spec_json("a").encode()), _ChangeLog({}))
    watcher._commit(consumer)
    assert consumer.offsets == {tp: 1000}
    # A bad record past the checked offset whose DLQ write fails (no producer here) pins
    # the commit before it, so the next owner sends it again.
    watcher._apply(tp, Record("streams", 0, 1205, b"b", b"{"), _ChangeLog({}))
    watcher._apply(tp, Record("streams", 0, 1300, b"c", spec_json("c").encode()), _ChangeLog({}))
    watcher._commit(consumer)
    assert consumer.offsets == {tp: 1205}
    assert watcher.status().dlq_failures == 1


def _child_main(settings_json: str) -> None:
    """A watcher in its own process (killed by a test): prints its stream ids on change."""
    configure_logging("console", "warning")  # logs to stderr; stdout carries the ids
    settings = KafkaSettings.model_validate_json(settings_json)
    ids: set[str] = set()

    def on_change(change: DesiredChange) -> None:
        ids.difference_update(change.stopped)
        ids.update(change.started)
        print("IDS", json.dumps(sorted(ids)), flush=True)

    watcher = AssignmentWatcher(
        settings, worker_id=f"child-{os.getpid()}", on_change=on_change, on_invalid=print
    )
    watcher.start()
    while True:
        time.sleep(1)


if __name__ == "__main__":
    _child_main(sys.argv[1])
