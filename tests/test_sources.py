"""Video sources against real files and a real RTSP server: sampling, reconnects, stalls, errors."""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import structlog

from ingest.frames import Frame
from ingest.sources import (
    CorruptSourceError,
    SourceError,
    SourceNotFoundError,
    SourceOpenError,
    SourceOptions,
    SourceState,
    VideoSource,
    _Timeline,
)
from ingest.urls import UnsupportedURLError
from tests.services.rtsp import RtspServer, free_port

pytestmark = pytest.mark.timeout(90)

FILES = SourceOptions(allow_file=True)
LIVE = SourceOptions(
    open_timeout_s=5,
    read_timeout_s=5,
    stall_timeout_s=3,
    reconnect_initial_s=0.2,
    reconnect_max_s=1.0,
)


class Consumer:
    """Iterates a source's frames in a named thread, as a stream runner would."""

    def __init__(self, source: VideoSource) -> None:
        self.source = source
        self.frames: list[Frame] = []
        self.states: list[tuple[SourceState, str | None]] = []
        self.error: BaseException | None = None
        self.finished_at: float | None = None
        self.thread = threading.Thread(target=self._run, name="test-consumer", daemon=True)

    def _run(self) -> None:
        try:
            for frame in self.source.frames():
                self.frames.append(frame)
        except BaseException as exc:
            self.error = exc
        finally:
            self.finished_at = time.monotonic()

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out waiting for {what}; state={self.source.state} "
                    f"error={self.source.error} frames={len(self.frames)} states={self.states}"
                )
            time.sleep(0.05)


def start_consumer(url: str, options: SourceOptions = LIVE) -> Consumer:
    states: list[tuple[SourceState, str | None]] = []
    source = VideoSource(
        url, options, stream_id="test-cam", on_state=lambda s, e: states.append((s, e))
    )
    consumer = Consumer(source)
    consumer.states = states
    consumer.thread.start()
    return consumer


# -- files ------------------------------------------------------------------------------------


def test_hamilton_clip_is_sampled_at_5fps_by_timestamp(hamilton_mp4: Path) -> None:
    source = VideoSource(str(hamilton_mp4), FILES.with_sample_fps(5.0))
    frames = list(source.frames())
    pts = np.array([f.pts_s for f in frames])
    spacing = np.diff(pts)
    assert 44 <= len(frames) <= 48
    assert np.all(spacing > 0)
    assert np.allclose(spacing, 0.2, atol=0.035)
    assert [f.index for f in frames] == sorted({f.index for f in frames})
    assert frames[0].image_bgr.shape == (360, 640, 3) and frames[0].image_bgr.dtype == np.uint8
    assert all(f.wall_time_s > 1e9 for f in frames)
    assert source.state is SourceState.DONE
    assert source.stats.frames_decoded == 275
    assert source.stats.frames_sampled == len(frames)


def test_frames_are_bgr(tmp_path: Path) -> None:
    clip = tmp_path / "red.mp4"
    _write_clip(clip, [i / 10 for i in range(5)], color_rgb=(220, 20, 20))
    frame = next(iter(VideoSource(str(clip), FILES).frames()))
    blue, green, red = frame.image_bgr[32, 32].astype(int)
    assert red > 150 and blue < 80 and green < 80


def _write_clip(
    path: Path, times_s: list[float], color_rgb: tuple[int, int, int] = (90, 90, 90)
) -> None:
    """An H.264 MP4 (64x64) with frames at the given presentation times (variable rate)."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, 1000)
        stream.codec_context.time_base = Fraction(1, 1000)
        image = np.zeros((64, 64, 3), np.uint8)
        image[:] = color_rgb
        for t in times_s:
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = round(t * 1000)
            frame.time_base = Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def test_slow_consumer_of_a_file_gets_every_sampled_frame(hamilton_mp4: Path) -> None:
    source = VideoSource(str(hamilton_mp4), SourceOptions(allow_file=True, queue_frames=1))
    frames = []
    for frame in source.frames():
        time.sleep(0.005)
        frames.append(frame)
    assert len(frames) == source.stats.frames_sampled >= 44
    assert source.stats.frames_dropped == 0


def test_sampling_follows_timestamps_not_frame_count(tmp_path: Path) -> None:
    # 2 s at 10 fps, then 2 s at 30 fps: by timestamp, 5 fps keeps every 0.2 s in both parts.
    times = [i / 10 for i in range(20)] + [2.0 + i / 30 for i in range(60)]
    clip = tmp_path / "vfr.mp4"
    _write_clip(clip, times)
    frames = list(VideoSource(str(clip), FILES.with_sample_fps(5)).frames())
    pts = np.array([f.pts_s for f in frames])
    assert 19 <= len(frames) <= 21
    assert np.allclose(np.diff(pts), 0.2, atol=0.04)
    slow_part = [f for f in frames if f.pts_s < 1.95]
    fast_part = [f for f in frames if f.pts_s >= 1.95]
    assert abs(len(slow_part) - len(fast_part)) <= 1


def test_missing_pts_are_derived_from_the_previous_frame_and_the_rate() -> None:
    timeline = _Timeline()
    timeline.reconnected()
    assert timeline.pts_s(None, 0.04) == 0.0
    assert timeline.pts_s(0.08, 0.04) == pytest.approx(0.08)
    assert timeline.pts_s(None, 0.04) == pytest.approx(0.12)


def test_timeline_stays_monotonic_across_a_reconnect() -> None:
    timeline = _Timeline()
    timeline.reconnected()
    timeline.pts_s(5.0, 0.04)
    timeline.reconnected()
    assert timeline.pts_s(None, 0.04) > 5.0
    assert timeline.pts_s(0.04, 0.04) > 5.04


def test_realtime_paces_a_file_like_a_camera(hamilton_mp4: Path) -> None:
    source = VideoSource(str(hamilton_mp4), SourceOptions(allow_file=True, realtime=True))
    frames: list[Frame] = []
    started = time.monotonic()
    for frame in source.frames():
        frames.append(frame)
        if len(frames) == 6:
            source.close()
    elapsed_s = time.monotonic() - started
    stream_s = frames[-1].pts_s - frames[0].pts_s
    wall_s = frames[-1].wall_time_s - frames[0].wall_time_s
    assert stream_s == pytest.approx(1.0, abs=0.05)
    assert wall_s == pytest.approx(stream_s, abs=0.25)
    assert elapsed_s < 3.0


def test_missing_file_raises_source_not_found(tmp_path: Path) -> None:
    source = VideoSource(str(tmp_path / "absent.mp4"), FILES)
    with pytest.raises(SourceNotFoundError, match="not found"):
        list(source.frames())
    assert source.state is SourceState.ERROR


def test_text_file_named_mp4_raises_corrupt_source(tmp_path: Path) -> None:
    fake = tmp_path / "notes.mp4"
    fake.write_text("these are meeting notes, not a video\n" * 50)
    with pytest.raises(CorruptSourceError, match="not a decodable video"):
        list(VideoSource(str(fake), FILES).frames())


def test_truncated_mp4_raises_corrupt_source(tmp_path: Path, hamilton_mp4: Path) -> None:
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(hamilton_mp4.read_bytes()[: hamilton_mp4.stat().st_size // 2])
    with pytest.raises(CorruptSourceError, match="truncated"):
        list(VideoSource(str(truncated), FILES).frames())


@pytest.mark.parametrize(
    "url", ["concat:a.mp4|b.mp4", "pipe:0", "udp://127.0.0.1:5000", "data:,x", "/tmp/a.m3u8"]
)
def test_refused_urls_never_reach_ffmpeg(url: str) -> None:
    with pytest.raises(UnsupportedURLError):
        VideoSource(url, FILES)


def test_local_files_need_allow_file(hamilton_mp4: Path) -> None:
    with pytest.raises(UnsupportedURLError, match="local files are not allowed"):
        VideoSource(str(hamilton_mp4), SourceOptions())


def test_per_stream_sample_fps_override_copies_options() -> None:
    base = SourceOptions(sample_fps=5)
    assert base.with_sample_fps(2.5).sample_fps == 2.5
    assert base.with_sample_fps(None) is base
    assert base.sample_fps == 5


# -- unreachable live sources -----------------------------------------------------------------


def test_closed_port_raises_open_error_quickly_and_hides_credentials() -> None:
    url = f"rtsp://admin:hunter2@127.0.0.1:{free_port()}/x?token=tok-9f8e"
    options = LIVE.model_copy(update={"give_up_after_failures": 2})
    source = VideoSource(url, options)
    started = time.monotonic()
    with structlog.testing.capture_logs() as logs, pytest.raises(SourceOpenError) as caught:
        list(source.frames())
    assert time.monotonic() - started < 5
    assert "refused" in str(caught.value).lower()
    assert source.stats.reconnects == 1
    texts = [str(caught.value), source.error or "", repr(logs)]
    for text in texts:
        assert "hunter2" not in text and "tok-9f8e" not in text and "admin" not in text
    assert any(entry.get("state") == "reconnecting" for entry in logs)


def test_non_routable_host_times_out_with_open_error() -> None:
    options = LIVE.model_copy(update={"open_timeout_s": 1.0, "give_up_after_failures": 1})
    source = VideoSource("rtsp://10.255.255.1:554/x", options)
    started = time.monotonic()
    with pytest.raises(SourceOpenError):
        list(source.frames())
    assert time.monotonic() - started < 4


def test_silent_server_times_out_within_the_open_timeout() -> None:
    # A socket that listens but never answers: the TCP handshake succeeds, RTSP gets no reply.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        options = LIVE.model_copy(update={"open_timeout_s": 1.0, "give_up_after_failures": 1})
        source = VideoSource(f"rtsp://127.0.0.1:{port}/x", options)
        started = time.monotonic()
        with pytest.raises(SourceOpenError, match="no answer within 1 s"):
            list(source.frames())
        assert 0.9 < time.monotonic() - started < 4


def test_unreachable_camera_keeps_retrying_until_closed() -> None:
    consumer = start_consumer(f"rtsp://u:pw-secret@127.0.0.1:{free_port()}/x")
    consumer.wait_for(lambda: consumer.source.stats.reconnects >= 2, 10, "two retries")
    assert consumer.source.state is SourceState.RECONNECTING
    assert "refused" in (consumer.source.error or "").lower()
    assert "pw-secret" not in (consumer.source.error or "")
    closed_at = time.monotonic()
    consumer.source.close()
    consumer.thread.join(3)
    assert consumer.finished_at is not None and consumer.finished_at - closed_at < 1.0
    assert consumer.error is None
    assert consumer.source.join(5)


# -- a real RTSP server -----------------------------------------------------------------------


def test_rtsp_stream_delivers_sampled_frames(rtsp_server: RtspServer) -> None:
    consumer = start_consumer(rtsp_server.url_with_credentials("viewer", "s3cret-pw"))
    consumer.wait_for(lambda: len(consumer.frames) >= 8, 20, "8 frames")
    consumer.source.close()
    consumer.thread.join(5)
    frames = consumer.frames
    spacing = np.diff([f.pts_s for f in frames])
    assert frames[0].image_bgr.shape == (360, 640, 3)
    assert np.all(spacing > 0)
    assert np.median(spacing) == pytest.approx(0.2, abs=0.05)
    assert consumer.states[0][0] is SourceState.RUNNING
    assert consumer.source.state is SourceState.DONE
    assert consumer.source.url.redacted.startswith("rtsp://***@127.0.0.1")


def test_slow_consumer_of_a_live_stream_gets_the_newest_frames(rtsp_server: RtspServer) -> None:
    source = VideoSource(rtsp_server.url, LIVE.model_copy(update={"queue_frames": 2}))
    received: list[Frame] = []
    for frame in source.frames():
        received.append(frame)
        if len(received) == 3:
            source.close()
        time.sleep(1.0)  # far slower than 5 frames/s
    assert source.stats.frames_dropped >= 3
    assert received[-1].pts_s - received[0].pts_s > 1.0  # skipped ahead, not queued up


def test_stream_reconnects_after_server_restart(rtsp_server: RtspServer) -> None:
    consumer = start_consumer(rtsp_server.url)
    consumer.wait_for(lambda: len(consumer.frames) >= 3, 20, "first frames")
    rtsp_server.stop()
    consumer.wait_for(lambda: consumer.source.state is SourceState.RECONNECTING, 10, "reconnecting")
    before = len(consumer.frames)
    time.sleep(1.0)  # a real outage: some failed reconnects
    rtsp_server.start()
    consumer.wait_for(lambda: len(consumer.frames) >= before + 3, 20, "frames after restart")
    assert consumer.source.state is SourceState.RUNNING
    seen = [state for state, _ in consumer.states]
    assert seen.index(SourceState.RECONNECTING) < len(seen) - 1 - seen[::-1].index(
        SourceState.RUNNING
    )
    assert consumer.source.stats.reconnects >= 1
    pts = [f.pts_s for f in consumer.frames]
    assert all(b > a for a, b in itertools.pairwise(pts))
    consumer.source.close()
    consumer.thread.join(5)
    assert consumer.error is None


def test_stalled_stream_is_detected_and_reconnected(rtsp_server: RtspServer) -> None:
    options = LIVE.model_copy(update={"stall_timeout_s": 1.5, "open_timeout_s": 2.0})
    consumer = start_consumer(rtsp_server.url, options)
    consumer.wait_for(lambda: len(consumer.frames) >= 3, 20, "first frames")
    rtsp_server.pause()
    consumer.wait_for(lambda: consumer.source.stats.stalls >= 1, 10, "a stall")
    assert SourceState.STALLED in [state for state, _ in consumer.states]
    # close() is prompt even while FFmpeg waits on a silent server.
    rtsp_server.resume()
    before = len(consumer.frames)
    consumer.wait_for(lambda: len(consumer.frames) >= before + 3, 20, "frames after the stall")
    assert consumer.source.state is SourceState.RUNNING
    rtsp_server.pause()
    time.sleep(0.5)
    closed_at = time.monotonic()
    consumer.source.close()
    consumer.thread.join(3)
    assert consumer.finished_at is not None and consumer.finished_at - closed_at < 1.0
    rtsp_server.resume()
    assert consumer.source.join(10)


def test_errors_are_raised_from_frames_as_source_errors(tmp_path: Path) -> None:
    # The base class catches every source failure a runner needs to report.
    with pytest.raises(SourceError):
        list(VideoSource(str(tmp_path / "nothing.mp4"), FILES).frames())


def test_live_test_pattern_server_streams(rtsp_server_factory: Callable[..., RtspServer]) -> None:
    server = rtsp_server_factory(media=None, mount="/pattern", pattern_fps=10)
    source = VideoSource(server.url, LIVE.with_sample_fps(5))
    frames: list[Frame] = []
    for frame in source.frames():
        frames.append(frame)
        if len(frames) == 3:
            source.close()
    assert frames[0].image_bgr.shape == (360, 640, 3)
    assert frames[-1].pts_s > frames[0].pts_s


def test_rtsp_over_udp_transport(rtsp_server: RtspServer) -> None:
    source = VideoSource(rtsp_server.url, LIVE.model_copy(update={"rtsp_transport": "udp"}))
    frames: list[Frame] = []
    for frame in source.frames():
        frames.append(frame)
        if len(frames) == 3:
            source.close()
    assert len(frames) == 3


# -- live HTTP (HLS without an end) -----------------------------------------------------------


def test_live_hls_keeps_reconnecting_when_its_server_goes_away(tmp_path: Path) -> None:
    # A playlist without #EXT-X-ENDLIST has no duration: live. Its failed reopens must lead to
    # more reconnects (as for RTSP), not to an error after the first one.
    import functools
    import http.server

    from tests.test_urls import _playlist, _QuietHandler, _write_ts_segment

    _write_ts_segment(tmp_path / "seg0.ts")
    (tmp_path / "live.m3u8").write_text(_playlist("seg0.ts").replace("#EXT-X-ENDLIST\n", ""))
    handler = functools.partial(_QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=server.serve_forever, name="test-http", daemon=True).start()
    options = LIVE.model_copy(
        update={"stall_timeout_s": 1.5, "read_timeout_s": 1.5, "reconnect_max_s": 0.3}
    )
    consumer = start_consumer(f"http://127.0.0.1:{server.server_address[1]}/live.m3u8", options)
    try:
        consumer.wait_for(lambda: len(consumer.frames) >= 2, 20, "first frames")
        assert consumer.source.is_live
        server.shutdown()
        server.server_close()
        consumer.wait_for(lambda: consumer.source.stats.reconnects >= 3, 20, "three retries")
        assert consumer.error is None
        assert consumer.source.state is SourceState.RECONNECTING
    finally:
        consumer.source.close()
        consumer.thread.join(5)
        server.server_close()
