"""A real headless browser for the tests: Debian's `chromium`, driven by playwright-core.

playwright-core (the npm package without bundled browsers) is fetched once with npm into
`.cache/playwright-core/` of the checkout (gitignored); `scripts/test.sh` installs the
`chromium` apt package. `browser_driver.mjs` runs under node and takes one JSON command per
line, so a Python test can interleave browser steps with the services it drives.

Fixture: `browser` (a fresh profile per test); skips with the reason where chromium, node
or the npm package cannot be had.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.services.npm_cache import fetch_once, npm

REPO_ROOT = Path(__file__).resolve().parents[2]
PLAYWRIGHT_CORE = "playwright-core@1.65.1"
CACHE_DIR = Path(
    os.environ.get("FACESTREAM_PLAYWRIGHT_CACHE", REPO_ROOT / ".cache" / "playwright-core")
)
CHROMIUM = os.environ.get("FACESTREAM_CHROMIUM", "/usr/bin/chromium")
DRIVER = Path(__file__).with_name("browser_driver.mjs")


class BrowserError(RuntimeError):
    """The browser could not be set up, or a command in it failed."""


def fetch_playwright_core(cache_dir: Path = CACHE_DIR) -> Path:
    """The installed `playwright-core` package folder, fetched with npm on first use."""
    package = cache_dir / "node_modules" / "playwright-core"

    def install() -> None:
        done = npm(
            "install", "--no-audit", "--no-fund", "--prefix", str(cache_dir), PLAYWRIGHT_CORE
        )
        if done.returncode != 0 or not (package / "package.json").is_file():
            raise BrowserError(f"npm install {PLAYWRIGHT_CORE} failed: {done.stderr[-2000:]}")

    fetch_once(cache_dir, package / "package.json", install, BrowserError, PLAYWRIGHT_CORE)
    return package


class Browser:
    """One headless chromium with a fresh profile; `call(cmd, **args)` runs one command."""

    def __init__(self, playwright_core: Path, profile_dir: Path) -> None:
        env = {
            **os.environ,
            "PLAYWRIGHT_CORE_DIR": str(playwright_core),
            "BROWSER_PROFILE_DIR": str(profile_dir),
            "CHROMIUM_PATH": CHROMIUM,
        }
        self._log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in close()
        self._process = subprocess.Popen(
            ["node", str(DRIVER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=env,
        )

    def call(self, cmd: str, **args: Any) -> Any:
        """Send one command; its value, or `BrowserError` with the browser's message."""
        assert self._process.stdin is not None and self._process.stdout is not None
        try:
            self._process.stdin.write(json.dumps({"cmd": cmd, **args}) + "\n")
            self._process.stdin.flush()
        except BrokenPipeError:
            raise BrowserError(f"browser driver exited: {self.stderr()}") from None
        line = self._process.stdout.readline()
        if not line:
            raise BrowserError(f"browser driver exited: {self.stderr()}")
        reply = json.loads(line)
        if not reply["ok"]:
            raise BrowserError(f"{cmd} failed: {reply['error']}")
        return reply["value"]

    def wait_for(self, expression: str, timeout_s: float) -> Any:
        """Wait until the JS function body `expression` returns something truthy."""
        return self.call("waitFor", expression=expression, timeoutMs=int(timeout_s * 1000))

    def stderr(self) -> str:
        self._log.seek(0)
        return self._log.read()[-3000:]

    def close(self) -> None:
        """Close the browser and the driver."""
        if self._process.poll() is None:
            with contextlib.suppress(BrowserError):
                self.call("close")
            try:
                self._process.wait(15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
        self._log.close()


def browser_missing_reason() -> str | None:
    """Why no browser can run here, or None."""
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} not found (apt: chromium)"
    if shutil.which("node") is None:
        return "node not found (apt: nodejs npm)"
    return None


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    """A headless chromium with a fresh profile, closed after the test."""
    reason = browser_missing_reason()
    if reason is not None:
        pytest.skip(reason)
    try:
        package = fetch_playwright_core()
    except BrowserError as exc:
        pytest.skip(str(exc))
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    instance = Browser(package, profile)
    try:
        yield instance
    finally:
        instance.close()


if __name__ == "__main__":
    print(fetch_playwright_core())
