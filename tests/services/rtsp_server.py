"""A test RTSP server: an MP4's H.264 track served in an endless loop, or a live pattern.

Run with Debian's `/usr/bin/python3` (it has the GStreamer `gi` bindings; the venv does not):

    /usr/bin/python3 tests/services/rtsp_server.py --port 8554 --file clip.mp4 --mount /cam
    /usr/bin/python3 tests/services/rtsp_server.py --port 8554 --pattern --mount /cam

The MP4 is demuxed once into memory (no re-encode); each client gets its own `appsrc` that
replays the access units with timestamps shifted by one clip length per loop, so a 9 s
clip plays for as long as the client stays. Prints `READY <port>` when listening.
"""

from __future__ import annotations

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstApp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstApp, GstRtspServer  # noqa: E402


def load_access_units(path: str) -> tuple[list[tuple[bytes, int, int]], Gst.Caps, int]:
    """Every H.264 access unit of `path` as (bytes, pts_ns, duration_ns), caps, clip length."""
    pipeline = Gst.parse_launch(
        f'filesrc location="{path}" ! qtdemux ! h264parse config-interval=-1 ! '
        "video/x-h264,stream-format=byte-stream,alignment=au ! appsink name=sink sync=false"
    )
    sink = pipeline.get_by_name("sink")
    pipeline.set_state(Gst.State.PLAYING)
    units: list[tuple[bytes, int, int]] = []
    caps = None
    while True:
        sample = sink.emit("pull-sample")
        if sample is None:
            break
        caps = caps or sample.get_caps()
        buf = sample.get_buffer()
        ok, info = buf.map(Gst.MapFlags.READ)
        if ok:
            units.append((bytes(info.data), int(buf.pts), int(buf.duration)))
            buf.unmap(info)
    pipeline.set_state(Gst.State.NULL)
    if not units or caps is None:
        raise SystemExit(f"no H.264 video found in {path}")
    last_pts, last_duration = units[-1][1], units[-1][2]
    step = last_duration if last_duration > 0 else 33_366_666
    return units, caps, last_pts + step


class LoopingFileFactory(GstRtspServer.RTSPMediaFactory):
    """One media per client: an appsrc fed with the clip's access units, looped forever."""

    def __init__(self, units: list[tuple[bytes, int, int]], caps: Gst.Caps, clip_ns: int):
        super().__init__()
        self.units, self.caps, self.clip_ns = units, caps, clip_ns
        self.set_shared(False)
        self.connect("media-configure", self._on_configure)

    def do_create_element(self, url):
        return Gst.parse_launch(
            "( appsrc name=src is-live=true format=time do-timestamp=false ! "
            "h264parse ! rtph264pay name=pay0 pt=96 config-interval=1 )"
        )

    def _on_configure(self, factory, media) -> None:
        appsrc = media.get_element().get_by_name("src")
        appsrc.set_property("caps", self.caps)
        position = {"i": 0}

        def need_data(src: GstApp.AppSrc, _length: int) -> None:
            i = position["i"]
            data, pts, duration = self.units[i % len(self.units)]
            buf = Gst.Buffer.new_wrapped(data)
            buf.pts = buf.dts = pts + (i // len(self.units)) * self.clip_ns
            buf.duration = duration
            position["i"] = i + 1
            src.emit("push-buffer", buf)

        appsrc.connect("need-data", need_data)


class PatternFactory(GstRtspServer.RTSPMediaFactory):
    """A live `videotestsrc` ball pattern encoded with x264 (shared by all clients)."""

    def __init__(self, width: int, height: int, fps: int):
        super().__init__()
        self.set_shared(True)
        self.set_launch(
            f"( videotestsrc is-live=true pattern=ball ! video/x-raw,width={width},"
            f"height={height},framerate={fps}/1 ! x264enc tune=zerolatency speed-preset=ultrafast"
            f" key-int-max={fps} ! rtph264pay name=pay0 pt=96 config-interval=1 )"
        )


def main() -> int:
    """Serve until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mount", default="/cam")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--file", help="MP4 with an H.264 track, served in a loop")
    source.add_argument("--pattern", action="store_true", help="live test pattern instead")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--fps", type=int, default=25)
    args = parser.parse_args()

    Gst.init(None)
    if args.file:
        factory = LoopingFileFactory(*load_access_units(args.file))
    else:
        factory = PatternFactory(args.width, args.height, args.fps)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    server.get_mount_points().add_factory(args.mount, factory)
    if server.attach(None) == 0:
        print(f"cannot listen on port {args.port}", file=sys.stderr, flush=True)
        return 1
    loop = GLib.MainLoop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signum, loop.quit)
    print(f"READY {args.port}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
