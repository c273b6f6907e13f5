"""Docker HEALTHCHECK: GET /healthz on the worker's HTTP port (from its settings)."""

from __future__ import annotations

import sys
import urllib.error
import urllib.request


def main() -> int:
    """0 when /healthz answers 200, else 1."""
    from worker.settings import Settings, SettingsError

    try:
        port = Settings().http.port
    except SettingsError as error:  # one line, like every facestream command
        print(f"healthcheck: {error}", file=sys.stderr)
        return 1
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as reply:
            return 0 if reply.status == 200 else 1
    except (urllib.error.URLError, OSError):
        return 1


if __name__ == "__main__":
    sys.exit(main())
