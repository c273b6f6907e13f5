"""Packages the tests fetch from the npm registry once, into a cache folder of the checkout
(`.cache/...`), guarded by a file lock so parallel test processes fetch them only once."""

from __future__ import annotations

import fcntl
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path


def fetch_once(
    cache_dir: Path, ready: Path, fetch: Callable[[], None], error: type[Exception], what: str
) -> Path:
    """`ready` (a path inside `cache_dir`), after calling `fetch()` under the cache's lock
    unless it exists already; `error(...)` when npm is missing."""
    if ready.exists():
        return ready
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not ready.exists():
            if shutil.which("npm") is None:
                raise error(f"npm is needed once to fetch {what}; install node/npm")
            fetch()
    return ready


def npm(*args: str) -> subprocess.CompletedProcess[str]:
    """Run npm with `args` (5 minutes at most), output captured."""
    return subprocess.run(["npm", *args], capture_output=True, text=True, timeout=300, check=False)
