"""`facestream submit` / `facestream stop` against a real Kafka 0.9.0.1 broker."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import structlog

from tests.services.kafka_broker import KafkaTopics, free_port
from tests.test_assignments import settings_for, start_watcher, wait_live
from worker.cli import main
from worker.specs import StreamSpec

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    """The commands configure structlog to write to the (captured) stderr of this test;
    later tests must not log into that closed capture (nor this one into an older one)."""
    saved = structlog.get_config()
    structlog.reset_defaults()
    yield
    structlog.configure(**saved)


def receipt_line(out: str, key: str) -> dict:
    """The command's JSON receipt (the watcher in the same process may log to stdout too)."""
    found = [line for line in out.splitlines() if line.startswith(f'{{"{key}"')]
    assert len(found) == 1, out
    return json.loads(found[0])


@pytest.mark.services
def test_submit_then_stop_round_trip_through_a_watcher(
    kafka_topics: KafkaTopics, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # Settings come from the environment; flags override them (here: the topic).
    monkeypatch.setenv("FACESTREAM_KAFKA__BOOTSTRAP_SERVERS", kafka_topics.broker.bootstrap_servers)
    monkeypatch.setenv("FACESTREAM_KAFKA__API_VERSION", "0.9")
    monkeypatch.setenv("FACESTREAM_KAFKA__TOPIC", "not-this-topic")
    watcher, recorder = start_watcher(settings_for(kafka_topics))
    try:
        wait_live(watcher)
        status = main(
            [
                "submit",
                "rtsp://admin:hunter2@cam.example:554/live",
                "--stream-id",
                "lobby-1",
                "--tasks",
                "emotion,age",
                "--label",
                "site=lobby",
                "--label",
                "note=a=b",
                "--detection-fps",
                "3",
                "--topic",
                kafka_topics.topic,
            ]
        )
        out, err = capsys.readouterr()
        assert status == 0, err
        receipt = receipt_line(out, "submitted")
        assert receipt["submitted"] == "lobby-1"
        assert receipt["topic"] == kafka_topics.topic
        assert "hunter2" not in out + err
        recorder.wait_for(lambda: "lobby-1" in recorder.mirror, 15, "lobby-1 started")
        spec = recorder.mirror["lobby-1"]
        assert [t.value for t in spec.tasks] == ["emotion", "age"]
        assert spec.labels == {"site": "lobby", "note": "a=b"}
        assert spec.detection_fps == 3.0
        assert spec.url == "rtsp://admin:hunter2@cam.example:554/live"

        status = main(["stop", "lobby-1", "--topic", kafka_topics.topic])
        out, err = capsys.readouterr()
        assert status == 0, err
        assert receipt_line(out, "stopped")["stopped"] == "lobby-1"
        recorder.wait_for(lambda: "lobby-1" not in recorder.mirror, 15, "lobby-1 stopped")
    finally:
        watcher.stop()
    records = kafka_topics.broker.consume(kafka_topics.topic, min_count=2)
    assert [r.key for r in records] == [b"lobby-1", b"lobby-1"]
    written = json.loads(records[0].value)
    assert written["schema_version"] == 1
    assert None not in written.values()  # unset overrides are left out, not null
    assert StreamSpec.model_validate(written) == spec
    assert records[1].value is None


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["concat:/etc/passwd", "--stream-id", "x"], "refusing"),
        (["ftp://user:hunter2@host/x", "--stream-id", "x"], "scheme 'ftp'"),
        (["/videos/a.mp4", "--stream-id", "x"], "local files are not allowed"),
        (["rtsp://cam/x", "--stream-id", "has space"], "stream_id"),
        (["rtsp://cam/x", "--stream-id", "x", "--tasks", "smile"], "tasks"),
        (["rtsp://cam/x", "--stream-id", "x", "--label", "nokey"], "KEY=VALUE"),
        (["rtsp://cam/x", "--stream-id", "x", "--detection-fps", "0"], "detection_fps"),
    ],
)
def test_submit_refuses_an_invalid_spec_before_touching_kafka(
    args: list[str], expected: str, capsys: pytest.CaptureFixture
) -> None:
    # Port 1 answers nothing: a refusal must come from validation, not from Kafka.
    status = main(["submit", *args, "--bootstrap-servers", "127.0.0.1:1", "--api-version", "0.9"])
    out, err = capsys.readouterr()
    assert status == 2
    assert expected in err
    assert out == ""
    assert "hunter2" not in err


def test_stop_refuses_an_invalid_stream_id(capsys: pytest.CaptureFixture) -> None:
    assert main(["stop", "../etc", "--bootstrap-servers", "127.0.0.1:1"]) == 2
    assert "not a stream id" in capsys.readouterr().err


def test_submit_says_when_kafka_does_not_answer(capsys: pytest.CaptureFixture) -> None:
    port = free_port()
    status = main(
        [
            "submit",
            "rtsp://cam/x",
            "--stream-id",
            "x",
            "--bootstrap-servers",
            f"127.0.0.1:{port}",
            "--api-version",
            "0.9",
            "--timeout-s",
            "1",
        ]
    )
    assert status == 1
    assert f"could not write to Kafka at 127.0.0.1:{port}" in capsys.readouterr().err


def test_bad_kafka_settings_are_reported_with_the_variable_to_fix(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("FACESTREAM_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("FACESTREAM_KAFKA__SASL_MECHANISM", "PLAIN")
    assert main(["stop", "x"]) == 2
    assert "FACESTREAM_KAFKA__SASL_PASSWORD" in capsys.readouterr().err


def test_invalid_settings_are_reported_without_echoing_their_values(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("FACESTREAM_KAFKA__SASL_PASWORD", "hunter2")  # misspelt secret
    assert main(["stop", "x"]) == 2
    err = capsys.readouterr().err
    assert "kafka.sasl_pasword" in err or "sasl_pasword" in err.lower()
    assert "hunter2" not in err
