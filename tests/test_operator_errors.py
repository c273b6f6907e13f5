"""What an operator sees when something is set up wrong: one line, exit 2, no traceback;
logs that are JSON on every line; Kafka failures that say what to check."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.services.kafka_broker import KafkaTopics, free_port
from worker.logs import RepeatLimiter

pytestmark = pytest.mark.timeout(180)


def facestream(*argv: str, env: dict[str, str] | None = None, timeout_s: float = 120):
    """Run the real CLI in a new process (its own environment and logging)."""
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("FACESTREAM_")}
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *argv],
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        timeout=timeout_s,
        check=False,
    )


def assert_one_line(completed: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2, exactly one stderr line, no traceback; the line holds every needle."""
    lines = completed.stderr.splitlines()
    assert completed.returncode == 2, completed.stderr
    assert len(lines) == 1, completed.stderr
    assert "Traceback" not in completed.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("variable", "closest"),
    [
        ("FACESTREAM_REDIS_URL", "FACESTREAM_REDIS__URL"),
        ("FACESTREAM_LOGLEVEL", "FACESTREAM_LOG_LEVEL"),
        ("FACESTREAM_MODEL_MODEL", "FACESTREAM_MODEL__MODEL"),
        ("FACESTREAM_KAFKA__BOOTSTRAP_SERVER", "FACESTREAM_KAFKA__BOOTSTRAP_SERVERS"),
    ],
)
def test_worker_refuses_a_mistyped_setting_before_connecting(variable: str, closest: str) -> None:
    # Redis and Kafka point at closed ports: a worker that got past the settings would
    # log connection errors (JSON) instead of the one plain line.
    closed = f"127.0.0.1:{free_port()}"
    env = {
        variable: "redis://127.0.0.1:1/0",
        "FACESTREAM_KAFKA__BOOTSTRAP_SERVERS": closed,
        "FACESTREAM_REDIS__URL": f"redis://{closed}/0",
    }
    line = assert_one_line(facestream("worker", env=env, timeout_s=60), variable)
    assert f"did you mean {closest}?" in line
    assert "redis://127.0.0.1:1/0" not in line  # values are never echoed (secrets)


def test_every_command_that_reads_settings_refuses_the_typo() -> None:
    env = {"FACESTREAM_REDIS_URL": "redis://127.0.0.1:1/0"}
    for argv in (
        ("status",),
        ("tail", "--count", "1"),
        ("stop", "lobby"),
        ("submit", "rtsp://cam.example/live", "--stream-id", "lobby"),
    ):
        assert_one_line(facestream(*argv, env=env), "FACESTREAM_REDIS__URL")


def test_variables_that_are_not_settings_but_ours_are_accepted(tmp_path: Path) -> None:
    env = {"FACESTREAM_TESTDATA": str(tmp_path), "FACESTREAM_KAFKA_CACHE": str(tmp_path)}
    completed = facestream("status", "--redis-url", f"redis://127.0.0.1:{free_port()}/0", env=env)
    assert "not a setting" not in completed.stderr
    assert "cannot reach Redis" in completed.stderr


def test_an_invalid_setting_value_is_one_line_for_worker_and_submit() -> None:
    env = {"FACESTREAM_GRACE_S": "soon", "FACESTREAM_KAFKA__SESSION_TIMEOUT_MS": "5"}
    for argv in (("worker",), ("submit", "rtsp://cam.example/live", "--stream-id", "x")):
        line = assert_one_line(facestream(*argv, env=env), "FACESTREAM_GRACE_S")
        assert "FACESTREAM_KAFKA__SESSION_TIMEOUT_MS" in line and "soon" not in line


def test_user_mistakes_give_one_line_and_exit_2(
    tmp_path: Path, hamilton_mp4: Path, mnet_weights: Path, tiny: Path
) -> None:
    video, weights = str(hamilton_mp4), str(mnet_weights)
    not_weights = tmp_path / "notes.pth"
    not_weights.write_text("not a torch file\n")
    pickled = tmp_path / "module.pth"
    import torch

    torch.save({"net": torch.nn.Linear(2, 2)}, pickled)  # pickled objects, not tensors
    offline = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty-cache")}
    cases = [
        (("analyze", video, "--weights", weights, "--model", "/no/such/model"), {}, "/no/such"),
        (
            ("analyze", video, "--weights", weights, "--out", str(tmp_path / "no" / "x.jsonl")),
            {},
            "does not exist",
        ),
        (
            ("analyze", video, "--weights", weights, "--save-clips", str(not_weights)),
            {},
            "is a file",
        ),
        (("analyze", video, "--weights", str(not_weights)), {}, "not a PyTorch weights file"),
        (("analyze", video, "--weights", str(pickled)), {}, "pickled Python objects"),
        (("analyze", video, "--tasks", "emotions"), {}, "emotion,age,attributes,action_units"),
        (("analyze", video, "--no-progress"), offline, "HF_HUB_OFFLINE"),
        (
            ("ask", video, "--task", "emotion", "--model", str(tiny / "checkpoint"), "--offline"),
            {**offline, "FACESTREAM_MODEL__TOWER_WEIGHTS": "checkpoint"},
            "tower_weights=checkpoint",
        ),
        (
            ("ask", video, "--task", "emotion", "--model", "chaubeyG/FaceLLaVA"),
            offline,
            "chaubeyG/FaceLLaVA",
        ),
    ]
    for argv, env, needle in cases:
        line = assert_one_line(facestream(*argv, env=env), needle)
        assert "weights_only" not in line and "  " not in line


def worker_log(env: dict[str, str]) -> list[dict]:
    completed = facestream("worker", env={"FACESTREAM_HTTP__PORT": "0", **env})
    assert completed.returncode == 2, completed.stderr
    assert "Traceback" not in completed.stderr
    return [json.loads(line) for line in completed.stderr.splitlines()]  # every line JSON


def test_worker_with_a_bad_model_or_detector_says_so_in_one_json_line(
    tmp_path: Path, mnet_weights: Path, tiny: Path
) -> None:
    bad_model = worker_log(
        {"FACESTREAM_DETECTOR__WEIGHTS": str(mnet_weights), "FACESTREAM_MODEL__MODEL": "/no/m"}
    )
    assert [r["event"] for r in bad_model] == ["cannot start: model"]
    assert "/no/m" in bad_model[0]["error"]
    bad_weights = worker_log(
        {
            "FACESTREAM_DETECTOR__WEIGHTS": str(tmp_path / "missing.pth"),
            "FACESTREAM_MODEL__MODEL": str(tiny / "checkpoint"),
        }
    )
    assert [r["event"] for r in bad_weights] == ["cannot start: detector weights"]
    assert "missing.pth" in bad_weights[0]["error"]


def test_dependency_logs_are_json_lines_and_repeats_are_limited() -> None:
    # kafka-python against a closed port logs many failed attempts through stdlib logging.
    code = (
        "import logging, warnings\n"
        "from worker.logs import configure_logging\n"
        "configure_logging('json', 'info')\n"
        "from kafka import KafkaProducer\n"
        "warnings.warn('a dependency warning')\n"
        "try:\n"
        f"    KafkaProducer(bootstrap_servers='127.0.0.1:{free_port()}', "
        "bootstrap_timeout_ms=3000, max_block_ms=3000)\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__)\n"
        "raise RuntimeError('nobody caught this')\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    records = [json.loads(line) for line in completed.stderr.splitlines()]
    kafka = [r for r in records if r.get("logger", "").startswith("kafka")]
    assert kafka and all(r["level"] in ("warning", "error", "critical") for r in kafka)
    messages = [(r["logger"], r["event"]) for r in kafka]
    assert len(messages) == len(set(messages))  # no repeat within the interval
    assert any(r.get("logger") == "py.warnings" for r in records)
    uncaught = [r for r in records if r["event"] == "uncaught exception"]
    assert len(uncaught) == 1 and "nobody caught this" in uncaught[0]["exception"]


def test_repeat_limiter_says_how_many_it_suppressed() -> None:
    limiter = RepeatLimiter(interval_s=0.2, max_keys=4)

    def record(msg: str, *args: object) -> logging.LogRecord:
        return logging.LogRecord("kafka.conn", logging.WARNING, __file__, 1, msg, args, None)

    passed = [limiter.filter(record("node %s down", n)) for n in range(50)]
    assert passed == [True] + [False] * 49
    time.sleep(0.25)
    again = record("node %s down", 99)
    assert limiter.filter(again) and again.suppressed == 49
    for n in range(10):  # many different messages: memory stays bounded
        limiter.filter(record(f"message {n}"))
    assert len(limiter._seen) == 4


def _submit_lobby(bootstrap_servers: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """`facestream submit` of one valid camera to the brokers at `bootstrap_servers`."""
    return facestream(
        "submit",
        "rtsp://cam.example/live",
        "--stream-id",
        "lobby",
        "--bootstrap-servers",
        bootstrap_servers,
        *extra,
    )


def test_submit_with_kafka_down_prints_one_useful_line() -> None:
    port = free_port()
    completed = _submit_lobby(f"127.0.0.1:{port}", "--timeout-s", "2")
    assert completed.returncode == 1
    lines = completed.stderr.splitlines()
    assert len(lines) == 1, completed.stderr
    assert f"could not write to Kafka at 127.0.0.1:{port}" in lines[0]
    assert "ECONNREFUSED" in lines[0] or "refused" in lines[0].lower()


@pytest.mark.services
def test_submit_to_a_0_9_broker_without_api_version_names_the_setting(
    kafka_topics: KafkaTopics,
) -> None:
    completed = _submit_lobby(
        kafka_topics.broker.bootstrap_servers,
        "--topic",
        kafka_topics.topic,
        "--timeout-s",
        "5",
    )
    assert completed.returncode == 1
    lines = completed.stderr.splitlines()
    assert len(lines) == 1, completed.stderr
    assert "older than 0.10" in lines[0] and "FACESTREAM_KAFKA__API_VERSION" in lines[0]


@pytest.mark.parametrize(("script", "status"), [("fetch_weights.py", 2), ("healthcheck.py", 1)])
def test_deploy_scripts_refuse_a_mistyped_setting_in_one_line(script: str, status: int) -> None:
    """The init container and the image's HEALTHCHECK read the same settings: a typo is
    one line naming the closest setting, not a traceback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACESTREAM_")}
    env["FACESTREAM_REDIS_URL"] = "redis://elsewhere:6379/0"
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve().parent.parent / "deploy" / script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == status
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert "FACESTREAM_REDIS__URL" in lines[0]


def test_every_facestream_variable_the_project_reads_is_a_setting_or_allowed() -> None:
    """A variable our tests or scripts read (`FACESTREAM_ARTIFACTS`, ...) must not make the
    worker refuse to start when an operator or CI sets it."""
    import re

    from worker.settings import NOT_SETTINGS, check_environment, setting_variable_names

    root = Path(__file__).resolve().parent.parent
    read = set()
    for folder in ("tests", "scripts", "deploy", "worker", "ingest", "models"):
        for path in (root / folder).rglob("*.py"):
            read |= set(
                re.findall(r"environ\.get\(\s*\"(FACESTREAM_[A-Z0-9_]+)\"", path.read_text())
            )
    assert read, "the scan found nothing: its pattern is wrong"
    assert read <= setting_variable_names() | set(NOT_SETTINGS)
    check_environment({name: "x" for name in read})  # refuses nothing
