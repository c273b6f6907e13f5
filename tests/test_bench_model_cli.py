"""`facestream bench model` prints its table on the tiny shapes (CPU, random weights)."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.cli import main

pytestmark = pytest.mark.timeout(120)


def bench_tiny(testdata: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    """`facestream bench model` on the tiny config with random weights on the CPU, `extra`,
    and the tiny checkpoint's tokenizer: what it printed, once it exited 0."""
    tokenizer = testdata / "facellava-tiny" / "checkpoint"
    status = main(
        [
            *("bench", "model", "--config", "tiny", "--random-weights", "--device", "cpu"),
            *extra,
            *("--tokenizer", str(tokenizer)),
        ]
    )
    assert status == 0
    return capsys.readouterr().out


def test_bench_model_tiny_prints_engine_and_single_rows(testdata: Path, capsys):
    out = bench_tiny(
        testdata, capsys, "--batch-sizes", "1,2", "--max-new-tokens", "3", "--repeats", "1"
    )
    assert "EOS ignored, every answer is exactly 3 tokens" in out
    rows = [line for line in out.splitlines() if line.startswith(("emotion", "4 tasks"))]
    labels = [row.split("|")[0].split() for row in rows]
    assert labels == [["emotion", "1"], ["emotion", "2"], ["4", "tasks", "1"], ["4", "tasks", "2"]]
    assert all(row.rstrip().endswith("x") for row in rows)  # speed-up column filled
    # Warm-up (1 + 3 questions) + 1 + 2 clips + 1 + 2 faces of 4 questions, 3 tokens each.
    assert "19 questions" in out and "57 generated tokens" in out


def test_bench_model_7b_refuses_cpu(capsys):
    assert main(["bench", "model", "--config", "7b", "--device", "cpu"]) == 2
    assert "CUDA" in capsys.readouterr().err


def test_bench_model_arrivals_prints_rate_latency_and_memory(testdata: Path, capsys):
    out = bench_tiny(
        testdata,
        capsys,
        *("--arrival-rate", "50", "--requests", "6", "--max-new-tokens", "3"),
        *("--workload", "4 tasks", "--max-visuals", "2"),
    )
    assert "KV slots: 2 per modality (fixed)" in out
    assert "faces 6 " in out and "clips/s" in out
    assert "p50" in out and "p95" in out and "peak process RSS" in out
