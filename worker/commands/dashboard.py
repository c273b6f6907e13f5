"""`facestream dashboard`: the read-only live web page over the worker's Redis output.

Reads the FACESTREAM_REDIS__* and FACESTREAM_DASHBOARD__* settings; binds loopback
unless a token is set.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

EXIT_CONFIG = 2


HELP = "serve the live web page (streams, people, events) from Redis"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `dashboard`."""
    parser.add_argument("--host", help="bind address (default: FACESTREAM_DASHBOARD__HOST)")
    parser.add_argument("--port", type=int, help="port (default: FACESTREAM_DASHBOARD__PORT)")


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT; exit 2 on an unsafe or invalid configuration."""
    from worker.dashboard.hub import DashboardHub
    from worker.dashboard.server import DashboardConfigError, DashboardServer
    from worker.logs import configure_logging
    from worker.settings import Settings

    settings = Settings()
    configure_logging(settings.log_format, settings.log_level)
    dash = settings.dashboard
    host = args.host if args.host is not None else dash.host
    port = args.port if args.port is not None else dash.port
    token = dash.token.get_secret_value() if dash.token is not None else None
    hub = DashboardHub(settings.redis, dash)
    try:
        server = DashboardServer(hub, host, port, token)
    except DashboardConfigError as exc:
        print(f"facestream dashboard: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        print(f"facestream dashboard: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    server.start()
    shown = f"[{host}]" if ":" in host else host
    print(f"facestream dashboard on http://{shown}:{server.port}/", file=sys.stderr, flush=True)
    try:
        while not stop.wait(1.0):
            if not hub.is_alive():
                print(f"facestream dashboard: reader died: {hub.failure!r}", file=sys.stderr)
                return 1
    finally:
        server.stop()
    return 0
