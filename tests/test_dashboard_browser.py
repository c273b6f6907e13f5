"""The dashboard page in a real headless chromium, against a real Redis fed by a real
worker (real Kafka 0.9, real RTSP camera, real RetinaFace, the tiny Face-LLaVA)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.services.browser import Browser, browser  # noqa: F401 - fixture
from tests.services.kafka_broker import free_port
from tests.workers import submit, wait_for
from worker.dashboard.sse_client import SseConnection
from worker.redis_keys import RedisKeys

pytestmark = [pytest.mark.timeout(300), pytest.mark.services, pytest.mark.slow]
HOSTILE = '<img src=x onerror="window.__xss=1">'


def _js(value: object) -> str:
    return json.dumps(value)


def _artifacts(tmp_path: Path) -> Path:
    """Where screenshots go: `$FACESTREAM_ARTIFACTS` (CI uploads it), else the test's tmp."""
    folder = Path(os.environ.get("FACESTREAM_ARTIFACTS", tmp_path)) / "dashboard"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_page_shows_live_stream_people_events_and_state_changes(
    browser: Browser,  # noqa: F811
    start_worker,
    worker_env,
    rtsp_server,
    worker_output,
    tmp_path: Path,
) -> None:
    prefix, client = worker_output
    worker = start_worker("w-dash", FACESTREAM_REDIS__THUMBNAILS="true")
    port = free_port()
    log = open(tmp_path / "dashboard.log", "w")  # noqa: SIM115 - closed below
    dashboard = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "dashboard", "--port", str(port)],
        env={**worker_env, "FACESTREAM_DASHBOARD__POLL_INTERVAL_S": "0.5"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    shots = _artifacts(tmp_path)
    try:
        worker.wait_ready()
        submit(worker_env, rtsp_server.url, "cam-1", "--tasks", "emotion,age")
        # A stream written by a newer facestream: unknown state and fields, hostile text.
        client.hset(
            RedisKeys(prefix).stream("odd-cam"),
            mapping={"state": "quarantined", "error": HOSTILE, "gpu_temp_c": "71"},
        )
        client.sadd(f"{prefix}:streams", "odd-cam")
        # A stream whose worker is gone (no liveness key): the hash still says running.
        client.hset(
            RedisKeys(prefix).stream("ghost-cam"),
            mapping={"state": "running", "worker_id": "w-ghost", "updated_s": str(time.time())},
        )
        client.sadd(f"{prefix}:streams", "ghost-cam")
        wait_for(lambda: client.xlen(f"{prefix}:events") > 0, 150, "a first event")

        browser.call("goto", url=f"http://127.0.0.1:{port}/")
        browser.wait_for(
            "const b = document.querySelector('#streams tr[data-stream=\"cam-1\"] .badge');"
            "return b && b.textContent === 'running';",
            30,
        )
        # A person with their answer, as the worker wrote it to the person hash.
        answers = browser.wait_for(
            "const a = [...document.querySelectorAll('.person[data-stream=\"cam-1\"] .answer')]"
            ".map(n => n.textContent).filter(t => t.length > 2); return a.length && a;",
            30,
        )
        person_answers = {
            json.loads(v)["answer_text"]
            for key in client.scan_iter(RedisKeys(prefix).person_pattern("cam-1"))
            for name, v in client.hgetall(key).items()
            if name in ("emotion", "age")
        }
        assert any(text.strip("“”") in person_answers for text in answers), answers
        browser.wait_for("return document.querySelector('.person .age').textContent !== '—';", 30)
        # Thumbnails are on for this worker: the person's face shows, served as a JPEG.
        size = browser.wait_for(
            "const i = document.querySelector('.person[data-stream=\"cam-1\"] img.thumb');"
            "return i && i.complete && i.naturalWidth > 0 && [i.naturalWidth, i.naturalHeight];",
            30,
        )
        assert 0 < max(size) <= 96, size
        # Unknown state and fields are shown; network text is shown as text, not run.
        odd = browser.call(
            "eval",
            expression="const r = document.querySelector('#streams tr[data-stream=\"odd-cam\"]');"
            "return {badge: r.querySelector('.badge').className, text: r.textContent,"
            " xss: window.__xss === undefined ? null : window.__xss,"
            " imgs: r.querySelectorAll('img').length};",
        )
        assert "state-other" in odd["badge"] and "quarantined" in odd["text"]
        assert HOSTILE in odd["text"] and "gpu_temp_c=71" in odd["text"]
        assert odd["xss"] is None and odd["imgs"] == 0
        ghost = browser.call(
            "eval",
            expression="const r = document.querySelector('#streams tr[data-stream=\"ghost-cam\"]');"
            "return {badge: r.querySelector('.badge').className, text: r.textContent};",
        )
        assert "state-owner_gone" in ghost["badge"], ghost
        assert "worker gone; last written: running" in ghost["text"], ghost
        assert "written_state=" not in ghost["text"], ghost
        browser.call("screenshot", path=str(shots / "dashboard_live.png"))

        # A new event shows within 2 s of reaching Redis, without a reload.
        browser.call("eval", expression="window.__sameDocument = true; return true;")
        last = client.xrevrange(f"{prefix}:events", count=1)[0][0]
        fresh = client.xread({f"{prefix}:events": last}, count=1, block=60000)
        new_id = fresh[0][1][0][0]
        browser.wait_for(
            f"return !!document.querySelector('#feed li[data-id={_js(new_id)}]');", 2.0
        )
        assert browser.call("eval", expression="return window.__sameDocument === true;")

        # The camera goes away: the stream's state change shows on the page.
        rtsp_server.stop()
        state = browser.wait_for(
            "const b = document.querySelector('#streams tr[data-stream=\"cam-1\"] .badge');"
            "return b && b.textContent !== 'running' && b.textContent;",
            60,
        )
        assert state in {"reconnecting", "stalled", "error"}, state
        browser.call("screenshot", path=str(shots / "dashboard_state_change.png"))
        assert browser.call("consoleErrors") == []
    finally:
        dashboard.terminate()
        try:
            assert dashboard.wait(15) == 0, "the dashboard exits 0 on SIGTERM"
        finally:
            if dashboard.poll() is None:
                dashboard.kill()
            log.close()
    if os.environ.get("FACESTREAM_UPDATE_DOCS_SCREENSHOT"):
        shutil.copy(shots / "dashboard_live.png", Path(__file__).parents[1] / "docs")


def test_page_reconnects_after_the_dashboard_restarts_and_resumes_the_feed(
    browser: Browser,  # noqa: F811
    redis_server,
    tmp_path: Path,
) -> None:
    """The browser's own EventSource reconnect (Last-Event-ID) fills what it missed."""
    from tests.events import emotion_event
    from worker.events import FaceEvent
    from worker.publisher import EventPublisher
    from worker.settings import RedisSettings

    settings = RedisSettings(url=redis_server.url, prefix="reco")
    port = free_port()
    env = {
        **os.environ,
        "FACESTREAM_REDIS__URL": redis_server.url,
        "FACESTREAM_REDIS__PREFIX": "reco",
        "FACESTREAM_LOG_FORMAT": "json",
    }

    def start() -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "dashboard", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                SseConnection("127.0.0.1", port, timeout_s=2).close()
                return proc
            except OSError:
                time.sleep(0.2)
        raise AssertionError("dashboard did not start")

    def event(n: int) -> FaceEvent:
        return emotion_event(
            "cam-x",
            1,
            n,
            "neutral",
            answer_text=f"answer {n}",
            window_end_s=n + 2.0,
            box_xyxy=(0.0, 0.0, 9.0, 9.0),
            model_id="m",
            worker_id="w",
        )

    proc = start()
    with EventPublisher(settings) as publisher:
        try:
            browser.call("goto", url=f"http://127.0.0.1:{port}/")
            browser.wait_for(
                "return document.getElementById('connection').dataset.state === 'live';", 20
            )
            for n in range(5):
                publisher.publish(event(n))
            browser.wait_for("return document.querySelectorAll('#feed li').length === 5;", 10)
            proc.terminate()
            assert proc.wait(15) == 0
            for n in range(5, 12):  # written while the page has no server
                publisher.publish(event(n))
            assert publisher.flush(5)
            proc = start()
            browser.wait_for("return document.querySelectorAll('#feed li').length === 12;", 20)
            texts = browser.call(
                "eval",
                expression="return [...document.querySelectorAll('#feed li .answer')]"
                ".map(n => n.textContent);",
            )
            assert texts == [f"answer {n}" for n in reversed(range(12))]  # no gap, no duplicate
        finally:
            proc.terminate()
            proc.wait(15)
