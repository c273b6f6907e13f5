"""`facestream bench worker` on CPU with the tiny shapes: live-paced streams through the
real detector and the model stage print sane figures (their speed is not checked)."""

from __future__ import annotations

import re

import pytest

from worker.cli import main

pytestmark = pytest.mark.timeout(180)


def test_bench_worker_prints_streams_held_rate_latency_and_memory(capsys) -> None:
    seconds = 7.0
    status = main(
        [
            *("bench", "worker", "--streams", "1,2", "--seconds", str(seconds)),
            *("--device", "cpu", "--max-new-tokens", "4", "--max-p95-s", "60"),
        ]
    )
    assert status == 0
    out = capsys.readouterr().out
    assert "paced in real time" in out
    runs = re.findall(
        r"^(\d+) streams, ([\d.]+) s: ([\d.]+) clips/s answered \(([\d.]+) windows/s offered\), "
        r"(\d+) events; frame-to-event p50 ([\d.]+) s, p95 ([\d.]+) s; .*held: (yes|no.*)$",
        out,
        re.MULTILINE,
    )
    assert [int(r[0]) for r in runs] == [1, 2], out
    for streams, elapsed, clips_s, offered_s, events, p50, p95, _held in runs:
        assert seconds <= float(elapsed) < seconds + 2
        assert int(events) >= int(streams)  # every stream's first window closes at 2.5 s
        # emotion only: one event per clip; the rate is the count over the run
        assert float(clips_s) == pytest.approx(int(events) / float(elapsed), abs=0.01)
        assert float(offered_s) >= float(clips_s) - 0.01  # nothing answered that was not offered
        assert 0 < float(p50) <= float(p95) < seconds
    held = re.search(r"^streams held: (\d) \(of 1, 2 tried\)$", out, re.MULTILINE)
    assert held, out
    rss = re.search(r"^memory: peak process RSS (\d+) MiB$", out, re.MULTILINE)
    assert rss and 100 < int(rss.group(1)) < 8000


def test_bench_worker_7b_refuses_cpu(capsys) -> None:
    assert main(["bench", "worker", "--config", "7b", "--device", "cpu"]) == 2
    assert "CUDA" in capsys.readouterr().err
