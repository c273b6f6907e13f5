#!/usr/bin/env bash
# Install everything the tests need on a fresh Debian machine, then run the whole suite.
# Real services (Kafka 0.9 + ZooKeeper, Redis, a GStreamer RTSP server) are started by
# the tests themselves; this script only installs them. Test data: ../shared/testdata
# (or $FACESTREAM_TESTDATA).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(redis-server python3-gi gir1.2-gst-rtsp-server-1.0
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly chromium)
missing=()
command -v java >/dev/null 2>&1 || missing+=(default-jre-headless)
command -v npm >/dev/null 2>&1 || missing+=(npm)
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing apt packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq || true
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip
# Pin the CPU build: any other torch spec pulls a multi-GB CUDA build.
.venv/bin/pip install -q "torch==2.13.0"
.venv/bin/pip install -q -e ".[dev]"

# playwright-core (drives Debian's chromium in the browser tests) into .cache/, once.
.venv/bin/python -m tests.services.browser >/dev/null

.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q -ra "$@"
