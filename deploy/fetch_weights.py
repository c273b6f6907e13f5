"""Fill the shared weights cache once; every later run finds the marker and exits at once.

Runs as the worker pod's init container (same image, same settings): downloads the
Face-LLaVA checkpoint named by `FACESTREAM_MODEL__MODEL`, the image/video towers its
config names, and the RetinaFace weights (`FACESTREAM_DETECTOR__WEIGHTS`) into the hub
cache under `HF_HOME` on the shared volume. A marker file per (model, detector weights)
records a complete fetch; a directory lock keeps pods that start together from
downloading twice (mkdir is atomic on network file systems, unlike flock).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

MARKER_DIR = ".facestream-fetched"
LOCK_STALE_S = 3 * 3600.0  # a download that held the lock this long has died
POLL_S = 5.0

Snapshot = Callable[[str], Path]


class FetchError(Exception):
    """The weights could not be put into the cache; the message says what to do."""


def cache_root() -> Path:
    """Where markers and the lock live: `HF_HOME` (the image sets /models/hf)."""
    return Path(os.environ.get("HF_HOME", "/models/hf"))


def marker_path(root: Path, model: str, detector_weights: str, extra_repos: list[str]) -> Path:
    """The marker that says this exact set of weights is complete in the cache."""
    key = json.dumps([model, detector_weights, sorted(extra_repos)]).encode()
    return root / MARKER_DIR / f"{hashlib.sha256(key).hexdigest()[:16]}.json"


@contextmanager
def directory_lock(path: Path, timeout_s: float, done: Path) -> Iterator[bool]:
    """Hold `path` (a directory) while fetching; yields False when `done` appeared meanwhile."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            path.mkdir(parents=True)
            break
        except FileExistsError:
            if done.exists():
                yield False
                return
            if time.time() - path.stat().st_mtime > LOCK_STALE_S:
                shutil.rmtree(path, ignore_errors=True)  # its holder died mid-download
                continue
            if time.monotonic() > deadline:
                raise FetchError(
                    f"another pod holds {path} for longer than {timeout_s:.0f} s; if no "
                    "download is running, delete that directory on the volume"
                ) from None
            time.sleep(POLL_S)
    try:
        yield True
    finally:
        shutil.rmtree(path, ignore_errors=True)


def hub_snapshot(repo_id: str) -> Path:
    """Download (or find in the cache) a whole hub repository; its local folder."""
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id))


def _is_local(name: str) -> bool:
    return name.startswith(("/", "./", "../")) or Path(name).exists()


def fetch_all(
    model: str,
    detector_weights: str,
    detector_sha256: str | None,
    extra_repos: list[str],
    snapshot: Snapshot = hub_snapshot,
) -> list[str]:
    """Fetch every weight the worker loads; returns what is now in place, for the marker."""
    from models.weights import WeightsError, resolve_weights

    fetched = []
    if _is_local(model):
        checkpoint = Path(model)
        if not (checkpoint / "config.json").is_file():
            raise FetchError(
                f"model folder {checkpoint} has no config.json: copy the checkpoint onto the "
                "volume first (kubectl cp), or set FACESTREAM_MODEL__MODEL to a hub id"
            )
    else:
        checkpoint = snapshot(model)
        fetched.append(model)
    config = json.loads((checkpoint / "config.json").read_text())
    towers = [config.get("mm_image_tower"), config.get("mm_video_tower"), *extra_repos]
    for repo in towers:
        if repo and not _is_local(repo):
            snapshot(repo)
            fetched.append(repo)
    try:
        fetched.append(str(resolve_weights(detector_weights, detector_sha256)))
    except WeightsError as exc:
        raise FetchError(str(exc)) from exc
    return fetched


def main(argv: list[str] | None = None, snapshot: Snapshot = hub_snapshot) -> int:
    """Entry point of the init container; 0 when the cache is complete."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extra-repo", action="append", default=[], help="Another hub repo.")
    parser.add_argument("--wait-s", type=float, default=3600.0, help="Wait for another pod.")
    args = parser.parse_args(argv)

    from worker.settings import Settings, SettingsError

    try:
        settings = Settings()
    except SettingsError as error:  # one line, like every facestream command
        print(f"fetch_weights: {error}", file=sys.stderr)
        return 2
    model, detector = settings.model.model, settings.detector.weights
    root = cache_root()
    marker = marker_path(root, model, detector, args.extra_repo)
    if marker.exists():
        print(f"weights already cached ({marker.name}): nothing to do", flush=True)
        return 0
    try:
        with directory_lock(root / MARKER_DIR / "lock", args.wait_s, marker) as holder:
            if holder and not marker.exists():
                fetched = fetch_all(
                    model, detector, settings.detector.weights_sha256, args.extra_repo, snapshot
                )
                marker.write_text(json.dumps({"fetched": fetched, "at": time.time()}))
                print(f"weights cached: {', '.join(fetched)}", flush=True)
            else:
                print("weights fetched by another pod", flush=True)
    except FetchError as exc:
        print(f"fetch-weights: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
