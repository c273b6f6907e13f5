"""Video sources: URL policy, PyAV open/decode, timestamp sampling, reconnects, stalls.

Pull from one consumer, blocking (one stream) or not (many streams, one thread)::

    source = VideoSource(url, options, stream_id="cam-1", on_state=report)
    for frame in source.frames():      # sampled `Frame`s, BGR uint8
        ...
    # or: source.start(wake=event); then source.take() -> Frame | None, never blocks
    # from any thread: source.close()  -> frames() ends promptly

- `VideoSource(...)` checks the URL at once (`UnsupportedURLError`); nothing is opened yet.
- `frames()` (or `start()`) starts a named reader thread (`source-<stream_id>`) that
  opens the URL with PyAV and explicit FFmpeg options (RTSP over TCP, socket timeouts,
  protocol and demuxer whitelists), decodes the video with threads and keeps frames at
  `sample_fps` by their timestamps. Frames reach `frames()` / `take()` through one queue
  bounded by `queue_frames` frames and `queue_bytes` bytes of pixels (one frame always
  fits): a live source drops the oldest frame when the consumer falls behind
  (counted in `stats.frames_dropped`), a file waits for the consumer. `take()` returns the
  oldest waiting frame or None; after the end `finished` is True, after a failure it raises
  the `SourceError`; `start(wake=event)` sets `event` whenever a frame or the end arrives.
- `pause()` / `resume()`: a paused live source closes its connection (no decoding, no
  frames) and opens a new one on resume. A file needs no pause: it stops decoding by itself
  while its queue is full and nobody takes its frames.
- Files end: `frames()` returns at the end (state `done`). A missing, unreadable or
  corrupt file raises a `SourceError` from `frames()` (state `error`).
- Live sources (rtsp/rtsps; http(s) with neither a duration nor a size) never end: a
  failed open, a dropped connection or a stall (no frame for `stall_timeout_s`) leads to
  `reconnecting` and a new connection after an exponential backoff with jitter, until
  `close()`, or until `give_up_after_failures` opens failed in a row (then `frames()`
  raises the last error).
- The stall watchdog is PyAV's interrupt callback: every blocking FFmpeg call is bounded
  (opens by `open_timeout_s`, each read by `min(read_timeout_s, stall_timeout_s)`, plus
  FFmpeg's socket timeouts), and the reader checks the time since the last decoded frame
  at every packet. So the reader thread always gets back to check for `close()`; `close()`
  does not wait for it (the consumer's `frames()` returns within ~0.1 s; `join()` waits).
  The container is never closed from another thread (that would free it under FFmpeg).
- `pts_s` is monotonic for the life of the source: after a reconnect it continues from
  the last frame's value plus the wall time of the outage. A frame without a pts (the
  first RTSP frame often) gets the previous pts plus one frame interval.
- State: `state` / `error` attributes and the optional `on_state(state, error_text)`
  callback (called from the reader or consumer thread; keep it quick). Counters: `stats`.
- Credentials never appear in logs, errors or state texts (`ingest.urls`).
"""

from __future__ import annotations

import enum
import itertools
import math
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field

from ingest.backoff import Backoff
from ingest.bounded import BoundedItems
from ingest.frames import Frame
from ingest.urls import SourceURL, UnsupportedURLError, check_source_url, scrub_secrets
from models.overrides import with_overrides

__all__ = [
    "CorruptSourceError",
    "SourceError",
    "SourceNotFoundError",
    "SourceOpenError",
    "SourceOptions",
    "SourceStalledError",
    "SourceState",
    "SourceStats",
    "UnsupportedURLError",
    "VideoSource",
]

log = structlog.get_logger(__name__)

_POLL_S = 0.1  # how often waiting threads look at the close flag


class SourceOptions(BaseModel):
    """How streams are opened, decoded, sampled and reconnected."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sample_fps: float = Field(5.0, gt=0, description="Frames per second kept for detection.")
    rtsp_transport: Literal["tcp", "udp"] = Field("tcp", description="RTSP transport.")
    open_timeout_s: float = Field(10.0, gt=0, description="Give up opening a source after this.")
    read_timeout_s: float = Field(10.0, gt=0, description="Socket read timeout of live sources.")
    allow_file: bool = Field(False, description="Allow local files (file: URLs and paths).")
    decode_threads: int = Field(2, ge=0, description="FFmpeg decoder threads (0 = auto).")
    reconnect_initial_s: float = Field(0.5, gt=0, description="First reconnect delay.")
    reconnect_max_s: float = Field(30.0, gt=0, description="Cap of the exponential backoff.")
    stall_timeout_s: float = Field(10.0, gt=0, description="No frame for this long = stalled.")
    realtime: bool = Field(False, description="Pace files like a live camera (wall = pts).")
    queue_frames: int = Field(
        8,
        ge=1,
        description="Sampled frames waiting per stream for detection; a live source drops its "
        "oldest, a file waits.",
    )
    queue_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1,
        description="Bytes of decoded frames waiting per stream (one frame always fits); the "
        "same policy as queue_frames applies when either bound is reached.",
    )
    give_up_after_failures: int = Field(
        0, ge=0, description="Live sources: fail after this many failed opens in a row (0 = never)."
    )
    max_pixels: int = Field(
        3840 * 2160,
        ge=64 * 64,
        description="Larger frames are scaled down to this many pixels (aspect kept) while "
        "decoding, before conversion to BGR.",
    )

    def with_sample_fps(self, sample_fps: float | None) -> SourceOptions:
        """A copy with a per-stream `sample_fps` (`StreamSpec.detection_fps`); None keeps it."""
        if sample_fps is None:
            return self
        return with_overrides(self, {"sample_fps": sample_fps})


class SourceState(enum.StrEnum):
    """Where a source is in its life."""

    STARTING = "starting"
    RUNNING = "running"
    RECONNECTING = "reconnecting"
    STALLED = "stalled"
    DONE = "done"
    ERROR = "error"


@dataclass(frozen=True)
class SourceStats:
    """Counters of one source (a snapshot), for metrics."""

    frames_decoded: int = 0
    frames_sampled: int = 0
    frames_dropped: int = 0
    decode_errors: int = 0
    reconnects: int = 0  # reconnect attempts (each backoff wait), successful or not
    stalls: int = 0


class SourceError(Exception):
    """A source could not be opened or read. Messages are redacted and say what to check."""


class SourceOpenError(SourceError):
    """The source could not be opened (network, refused, timeout, auth, no video stream)."""


class SourceNotFoundError(SourceOpenError):
    """The local file or remote resource does not exist."""


class CorruptSourceError(SourceError):
    """The data is not a decodable video (wrong format, truncated, broken)."""


class SourceStalledError(SourceError):
    """A live source delivered no frame for `stall_timeout_s` (it will be reconnected)."""


StateCallback = Callable[[SourceState, str | None], None]


def _describe_av_error(exc: BaseException, url: SourceURL) -> str:
    """FFmpeg's reason without the file name it appends (which may carry credentials)."""
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return scrub_secrets(str(reason), url.ffmpeg_url)


def _classify_open_error(
    exc: BaseException, url: SourceURL, options: SourceOptions, elapsed_s: float
) -> SourceError:
    """Map a PyAV/FFmpeg open failure to our exception with an actionable message."""
    import av

    reason = _describe_av_error(exc, url)
    where = url.redacted
    # The RTSP demuxer reports an interrupted (timed out) open as "invalid data".
    timed_out = elapsed_s >= 0.95 * options.open_timeout_s
    if timed_out or isinstance(exc, av.error.ExitError | TimeoutError | av.error.TimeoutError):
        return SourceOpenError(
            f"{where}: no answer within {options.open_timeout_s:g} s ({reason}); "
            "check that the host is reachable"
        )
    if isinstance(exc, FileNotFoundError | av.error.HTTPNotFoundError):
        hint = "check the path" if url.is_file else "check the host path / mount name"
        return SourceNotFoundError(f"{where}: not found ({reason}); {hint}")
    if isinstance(exc, av.error.InvalidDataError) and not url.is_file:
        # FFmpeg's RTSP/HTTP demuxers also say this when the network is unreachable.
        return SourceOpenError(
            f"{where}: no usable video stream ({reason}); check that the host is reachable "
            "and serves H.264/H.265 video at that path"
        )
    if isinstance(exc, av.error.InvalidDataError):
        return CorruptSourceError(
            f"{where}: not a decodable video ({reason}); the file may be truncated or not media"
        )
    if isinstance(exc, av.error.HTTPUnauthorizedError | av.error.HTTPForbiddenError):
        return SourceOpenError(f"{where}: access denied ({reason}); check the credentials")
    if isinstance(exc, av.error.ArgumentError):
        return SourceOpenError(
            f"{where}: FFmpeg refused the source ({reason}); it may need a protocol or format "
            "facestream does not allow"
        )
    if isinstance(exc, OSError | av.error.FFmpegError):
        return SourceOpenError(f"{where}: could not open ({reason}); check host, port and path")
    return SourceOpenError(f"{where}: could not open ({type(exc).__name__}: {reason})")


def _ffmpeg_options(url: SourceURL, options: SourceOptions) -> dict[str, str]:
    """Explicit FFmpeg options for `url` (FFmpeg 8 names; times in microseconds)."""
    socket_timeout_us = str(int(options.read_timeout_s * 1e6))
    opts = {
        "protocol_whitelist": url.protocol_whitelist,
        "format_whitelist": url.format_whitelist,
    }
    if url.scheme in ("rtsp", "rtsps"):
        # FFmpeg 5+ renamed RTSP's socket timeout `stimeout` to `timeout`.
        opts |= {"rtsp_transport": options.rtsp_transport, "timeout": socket_timeout_us}
    elif url.scheme in ("http", "https"):
        opts |= {"timeout": socket_timeout_us, "rw_timeout": socket_timeout_us}
    return opts


def _is_finite(url: SourceURL, container: Any) -> bool:
    """Whether an open source ends (file, VOD) rather than runs for ever (camera, live feed).

    RTSP is live and files are finite. Over HTTP(S) a known duration means finite; a live
    HLS playlist has none. Any other HTTP resource is finite when the server announced its
    size (Content-Length: a file, served with or without Range support) and live when it
    did not (a stream that is written as it is sent), so a finite MPEG-TS file is never
    replayed as if it were a camera.
    """
    if url.is_live:
        return False
    if url.scheme not in ("http", "https") or container.duration is not None:
        return True
    if "hls" in container.format.name.split(","):
        return False
    return int(container.size) > 0


def _check_regular_file(url: SourceURL) -> None:
    """Refuse what is not a regular file (a FIFO would block FFmpeg's open for ever)."""
    path = url.ffmpeg_url.removeprefix("file:")
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise SourceNotFoundError(f"{url.redacted}: not found; check the path") from None
    except OSError as exc:
        raise SourceOpenError(f"{url.redacted}: cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(mode):
        raise SourceOpenError(
            f"{url.redacted}: not a regular file (a FIFO, device or folder); "
            "only video files can be read"
        )


def scaled_size(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """(width, height) scaled down, aspect kept, so width × height ≤ `max_pixels` (even sides)."""
    if width * height <= max_pixels:
        return width, height
    scale = math.sqrt(max_pixels / (width * height))
    scaled_w = max(2, int(width * scale) // 2 * 2)
    scaled_h = max(2, int(height * scale) // 2 * 2)
    # A very thin frame: its short side stops at 2 px, so the long side gets what is left.
    if scaled_h == 2:
        scaled_w = min(scaled_w, max_pixels // 2 // 2 * 2)
    elif scaled_w == 2:
        scaled_h = min(scaled_h, max_pixels // 2 // 2 * 2)
    return scaled_w, scaled_h


def _to_bgr(av_frame: Any, max_pixels: int) -> Any:
    """The frame as a BGR uint8 array of at most `max_pixels` pixels.

    A larger frame is scaled (area interpolation) in the same swscale pass that converts it
    from the decoder's YUV, so a full-size BGR copy never exists.
    """
    width, height = scaled_size(av_frame.width, av_frame.height, max_pixels)
    if (width, height) == (av_frame.width, av_frame.height):
        return av_frame.to_ndarray(format="bgr24")
    return av_frame.to_ndarray(format="bgr24", width=width, height=height, interpolation="AREA")


class _Sampler:
    """Keeps frames on a `1 / fps` grid of stream time; a gap or jump re-anchors the grid."""

    def __init__(self, fps: float) -> None:
        self.period_s = 1.0 / fps
        self.next_due_s: float | None = None

    def keep(self, pts_s: float) -> bool:
        tolerance_s = 1e-3
        if self.next_due_s is None or pts_s + tolerance_s < self.next_due_s - self.period_s:
            self.next_due_s = pts_s + self.period_s
            return True
        if pts_s + tolerance_s < self.next_due_s:
            return False
        self.next_due_s += self.period_s
        if self.next_due_s <= pts_s:
            self.next_due_s = pts_s + self.period_s
        return True


class _Timeline:
    """Turns per-connection pts (maybe None, maybe restarting) into one monotonic stream time."""

    def __init__(self) -> None:
        self.last_pts_s: float | None = None
        self.last_mono_s = 0.0
        self.offset_s = 0.0
        self.last_raw_s: float | None = None
        self.new_connection = False

    def reconnected(self) -> None:
        self.new_connection = True
        self.last_raw_s = None

    def pts_s(self, raw_s: float | None, frame_interval_s: float) -> float:
        now = time.monotonic()
        if raw_s is None:
            raw_s = self.last_raw_s + frame_interval_s if self.last_raw_s is not None else 0.0
        if self.last_pts_s is not None:
            if self.new_connection:
                gap_s = max(now - self.last_mono_s, frame_interval_s)
                self.offset_s = self.last_pts_s + gap_s - raw_s
            elif raw_s + self.offset_s <= self.last_pts_s:
                # Timestamps jumped back inside one connection: continue one frame later.
                self.offset_s = self.last_pts_s + frame_interval_s - raw_s
        self.new_connection = False
        self.last_raw_s = raw_s
        self.last_mono_s = now
        self.last_pts_s = raw_s + self.offset_s
        return self.last_pts_s


class _End:
    """Queue marker: the reader finished (error None) or failed."""

    def __init__(self, error: SourceError | None) -> None:
        self.error = error


class _FrameQueue:
    """The frames waiting for the consumer, bounded by count and by bytes of pixels
    (`ingest.bounded`: an empty queue takes any one frame). The end marker counts as an
    item of no bytes."""

    def __init__(self, max_items: int, max_bytes: int) -> None:
        self._items: BoundedItems[int, Frame | _End] = BoundedItems(
            max_items, max_bytes, self._size
        )
        self._cond = self._items.cond
        self._next_key = itertools.count()

    @staticmethod
    def _size(item: Frame | _End) -> int:
        return int(item.image_bgr.nbytes) if isinstance(item, Frame) else 0

    def _append(self, item: Frame | _End) -> None:
        self._items.add(next(self._next_key), item)
        self._cond.notify_all()

    def _pop(self) -> Frame | _End:
        item = self._items.remove_oldest()
        self._cond.notify_all()
        return item

    def put(self, item: Frame | _End, timeout_s: float) -> bool:
        """Queue `item`, waiting up to `timeout_s` for room; False when there was none."""
        with self._cond:
            if not self._items.fits(item):
                self._cond.wait(timeout_s)
                if not self._items.fits(item):
                    return False
            self._append(item)
            return True

    def put_dropping_oldest(self, item: Frame | _End) -> int:
        """Queue `item` at once, dropping the oldest waiting items until it fits; returns
        how many frames were dropped."""
        dropped = 0
        with self._cond:
            while not self._items.fits(item):
                if isinstance(self._pop(), Frame):
                    dropped += 1
            self._append(item)
        return dropped

    def get(self, timeout_s: float = 0.0) -> Frame | _End | None:
        """The oldest item, waiting up to `timeout_s` for one; None when there is none."""
        with self._cond:
            if not self._items and timeout_s > 0:
                self._cond.wait(timeout_s)
            return self._pop() if self._items else None

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        """Bytes of the frames waiting now."""
        return self._items.nbytes


class _StopRequestedError(Exception):
    """Internal: close() was called."""


class _PausedError(Exception):
    """Internal: pause() was called on a live source; close the connection and wait."""


class _ConnectionLostError(Exception):
    """Internal: a live connection ended or stalled; reconnect."""

    def __init__(self, reason: str, delivered: bool, stalled: bool = False) -> None:
        super().__init__(reason)
        self.delivered = delivered
        self.stalled = stalled


class VideoSource:
    """Frames of one video stream, sampled by timestamp, with reconnects (see module doc)."""

    def __init__(
        self,
        url: str,
        options: SourceOptions | None = None,
        stream_id: str = "source",
        on_state: StateCallback | None = None,
    ) -> None:
        self.options = options or SourceOptions()
        self.url: SourceURL = check_source_url(url, allow_file=self.options.allow_file)
        self.stream_id = stream_id
        self._on_state = on_state
        self._log = log.bind(stream_id=stream_id, url=self.url.redacted)
        self._state = SourceState.STARTING
        self._error: str | None = None
        self._state_lock = threading.Lock()
        self._stop = threading.Event()
        self._queue = _FrameQueue(self.options.queue_frames, self.options.queue_bytes)
        self._resumed = threading.Event()  # cleared while paused (see `pause`)
        self._resumed.set()
        self._thread: threading.Thread | None = None
        self._wake: threading.Event | None = None
        self._finished = False
        self._backoff = Backoff(
            self.options.reconnect_initial_s, self.options.reconnect_max_s, jitter=0.5
        )
        self._counts = dict.fromkeys(SourceStats.__dataclass_fields__, 0)
        self._timeline = _Timeline()
        self._sampler = _Sampler(self.options.sample_fps)
        # Live: drop the oldest queued frame, reconnect on any failure. http(s) decides
        # once open (no duration = live) and keeps that for its reconnects.
        self._live = self.url.is_live

    # -- public -------------------------------------------------------------------------

    @property
    def state(self) -> SourceState:
        """The current state."""
        return self._state

    @property
    def error(self) -> str | None:
        """Text of the last error (redacted), kept while reconnecting; None when healthy."""
        return self._error

    @property
    def stats(self) -> SourceStats:
        """A snapshot of the counters."""
        return SourceStats(**self._counts)

    @property
    def is_live(self) -> bool:
        """True for rtsp/rtsps. (An http(s) source is treated as live once open if FFmpeg
        reports no duration, e.g. live HLS.)"""
        return self._live

    @property
    def waiting(self) -> int:
        """Frames waiting in the queue now (for the queue-depth metric)."""
        return len(self._queue)

    @property
    def waiting_bytes(self) -> int:
        """Bytes of the frames waiting in the queue now (for the memory metric)."""
        return self._queue.nbytes

    @property
    def paused(self) -> bool:
        """Whether `pause()` holds the source now."""
        return not self._resumed.is_set()

    def pause(self) -> None:
        """Stop decoding until `resume()`: a live source closes its connection at the next
        packet and opens a new one on resume (its stream time continuing by the wall time
        passed). A finite source ignores it: it waits anyway while its queue is full."""
        self._resumed.clear()

    def resume(self) -> None:
        """Decode again after `pause()`."""
        self._resumed.set()

    @property
    def finished(self) -> bool:
        """True once `take()` has passed the end of a finite source (every frame taken)."""
        return self._finished

    def start(self, wake: threading.Event | None = None) -> None:
        """Start the reader thread (once); `wake` is set whenever a frame or the end arrives."""
        if self._thread is not None:
            raise RuntimeError("a VideoSource can be started only once")
        self._wake = wake
        self._thread = threading.Thread(
            target=self._read_loop, name=f"source-{self.stream_id}", daemon=True
        )
        self._thread.start()

    def take(self) -> Frame | None:
        """The oldest waiting frame, or None; never blocks. Raises the `SourceError` the
        source failed with (once every frame before it was taken)."""
        if self._finished:
            return None
        item = self._queue.get()
        if item is None:
            return None
        if isinstance(item, _End):
            self._finished = True
            if item.error is not None:
                raise item.error
            return None
        return item

    def frames(self) -> Iterator[Frame]:
        """Sampled frames until the end (files), or until `close()`; raises `SourceError`."""
        self.start()
        try:
            while not self._stop.is_set():
                item = self._queue.get(_POLL_S)
                if item is None:
                    continue
                if isinstance(item, _End):
                    self._finished = True
                    if item.error is not None:
                        raise item.error
                    return
                yield item
        finally:
            self.close()

    def close(self) -> None:
        """Stop the source from any thread; `frames()` returns promptly. Idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._state not in (SourceState.DONE, SourceState.ERROR):
            self._set_state(SourceState.DONE)

    def join(self, timeout_s: float | None = None) -> bool:
        """Wait for the reader thread to finish (after close/end); True when it has."""
        if self._thread is None:
            return True
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    @property
    def _read_timeout_s(self) -> float:
        """PyAV's per-read limit: a read blocked this long counts as a stall."""
        return min(self.options.read_timeout_s, self.options.stall_timeout_s)

    # -- state ----------------------------------------------------------------------------

    def _set_state(self, state: SourceState, error: str | None = None) -> None:
        with self._state_lock:
            if self._state in (SourceState.DONE, SourceState.ERROR):
                return  # final states stay
            changed = state != self._state or error != self._error
            self._state, self._error = state, error
        if not changed:
            return
        self._log.info("source.state", state=state.value, error=error)
        if self._on_state is not None:
            try:
                self._on_state(state, error)
            except Exception:
                self._log.exception("source.state_callback_failed")

    def _count(self, name: str, n: int = 1) -> None:
        self._counts[name] += n

    # -- reader thread ----------------------------------------------------------------------

    def _read_loop(self) -> None:
        failures = 0  # connections in a row that delivered nothing
        try:
            while not self._stop.is_set():
                try:
                    self._run_connection()
                except _PausedError:
                    self._wait_resumed()
                    continue
                except _ConnectionLostError as lost:
                    if lost.stalled:
                        self._count("stalls")
                        self._set_state(SourceState.STALLED, str(lost))
                    if lost.delivered:
                        failures = 0
                        self._backoff.reset()
                    else:
                        failures += 1
                        self._check_give_up(failures, SourceOpenError(f"{self.url}: {lost}"))
                    self._reconnect_wait(str(lost))
                    continue
                except SourceError as exc:
                    if not self._live:
                        raise
                    failures += 1
                    self._check_give_up(failures, exc)
                    self._reconnect_wait(str(exc))
                    continue
                if self._stop.is_set():
                    break
                # A finite source reached its end.
                self._set_state(SourceState.DONE)
                self._put_final(_End(None))
                return
        except _StopRequestedError:
            pass
        except SourceError as exc:
            self._set_state(SourceState.ERROR, str(exc))
            self._log.warning("source.failed", error=str(exc), error_type=type(exc).__name__)
            self._put_final(_End(exc))
            return
        except Exception as exc:  # a bug or an unexpected library error: report, never hang
            error = SourceError(
                f"{self.url.redacted}: unexpected {type(exc).__name__}: "
                f"{scrub_secrets(str(exc), self.url.ffmpeg_url)}"
            )
            self._set_state(SourceState.ERROR, str(error))
            self._log.error("source.crashed", error=str(error))
            self._put_final(_End(error))
            return
        self._put_final(_End(None))

    def _check_give_up(self, failures: int, error: SourceError) -> None:
        limit = self.options.give_up_after_failures
        if limit and failures >= limit:
            raise error

    def _reconnect_wait(self, reason: str) -> None:
        """Report `reconnecting` and wait the backoff delay (interruptible by close)."""
        self._count("reconnects")
        delay_s = self._backoff.next_delay_s()
        self._set_state(SourceState.RECONNECTING, reason)
        # One warning per attempt, as it happens: an operator watching a CLI sees why.
        self._log.warning(
            "source.reconnecting",
            reason=reason,
            attempt=self._backoff.attempt,
            delay_s=round(delay_s, 3),
        )
        if self._stop.wait(delay_s):
            raise _StopRequestedError

    def _wait_resumed(self) -> None:
        """Wait (connection closed) until `resume()`; `close()` ends the wait."""
        self._log.info("source.paused")
        while not self._resumed.wait(_POLL_S):
            if self._stop.is_set():
                raise _StopRequestedError
        self._log.info("source.resumed")

    def _put_final(self, item: _End) -> None:
        """Queue the end marker behind the frames; once closed, make room instead of waiting."""
        while True:
            if self._stop.is_set():
                self._queue.put_dropping_oldest(item)
                self._wake_consumer()
                return
            if self._queue.put(item, _POLL_S):
                self._wake_consumer()
                return

    def _wake_consumer(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _deliver(self, frame: Frame) -> None:
        if self._live:
            self._count("frames_dropped", self._queue.put_dropping_oldest(frame))
            self._wake_consumer()
            return
        while not self._stop.is_set():
            if self._queue.put(frame, _POLL_S):
                self._wake_consumer()
                return
        raise _StopRequestedError

    def _open(self) -> Any:
        import av

        if self.url.is_file:
            _check_regular_file(self.url)
        started = time.monotonic()
        try:
            return av.open(
                self.url.ffmpeg_url,
                mode="r",
                options=_ffmpeg_options(self.url, self.options),
                timeout=(self.options.open_timeout_s, self._read_timeout_s),
            )
        except Exception as exc:
            elapsed_s = time.monotonic() - started
            raise _classify_open_error(exc, self.url, self.options, elapsed_s) from None

    def _run_connection(self) -> None:
        """Open, decode and deliver until the end (a finite source returns).

        Raises `SourceError` (open failed / corrupt), `_ConnectionLostError` (live: ended or
        stalled after delivering), `_StopRequestedError` (closed).
        """
        import av

        container = self._open()
        delivered = False
        try:
            if self._stop.is_set():
                raise _StopRequestedError
            if not container.streams.video:
                raise CorruptSourceError(f"{self.url.redacted}: has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            stream.codec_context.thread_count = self.options.decode_threads
            rate = stream.average_rate or stream.guessed_rate or 25
            frame_interval_s = 1.0 / float(rate)
            finite = _is_finite(self.url, container)
            sampler = self._sampler
            self._live = not finite
            self._timeline.reconnected()
            started_mono = time.monotonic()
            last_frame_mono = started_mono
            first_pts_s: float | None = None
            try:
                for packet in container.demux(stream):
                    if self._stop.is_set():
                        raise _StopRequestedError
                    if not finite and not self._resumed.is_set():
                        raise _PausedError
                    now = time.monotonic()
                    if not finite and now - last_frame_mono > self.options.stall_timeout_s:
                        raise _ConnectionLostError(
                            f"no frame for {self.options.stall_timeout_s:g} s",
                            delivered,
                            stalled=True,
                        )
                    try:
                        decoded = packet.decode()
                    except av.error.InvalidDataError:
                        self._count("decode_errors")
                        continue
                    for av_frame in decoded:
                        last_frame_mono = time.monotonic()
                        index = self._counts["frames_decoded"]
                        self._count("frames_decoded")
                        raw_s = (
                            float(av_frame.pts * av_frame.time_base)
                            if av_frame.pts is not None and av_frame.time_base is not None
                            else None
                        )
                        pts_s = self._timeline.pts_s(raw_s, frame_interval_s)
                        if not sampler.keep(pts_s):
                            continue
                        if first_pts_s is None:
                            first_pts_s = pts_s
                        if self.options.realtime and finite:
                            due_s = started_mono + (pts_s - first_pts_s) - time.monotonic()
                            if due_s > 0 and self._stop.wait(due_s):
                                raise _StopRequestedError
                        frame = Frame(
                            index=index,
                            pts_s=pts_s,
                            wall_time_s=time.time(),
                            image_bgr=_to_bgr(av_frame, self.options.max_pixels),
                        )
                        self._count("frames_sampled")
                        delivered = True
                        self._set_state(SourceState.RUNNING)
                        self._deliver(frame)
            except (_StopRequestedError, _PausedError, _ConnectionLostError, SourceError):
                raise
            except (av.error.ExitError, TimeoutError, av.error.TimeoutError) as exc:
                if finite:
                    raise CorruptSourceError(
                        f"{self.url.redacted}: read timed out ({_describe_av_error(exc, self.url)})"
                    ) from None
                raise _ConnectionLostError(
                    f"no data for {self._read_timeout_s:g} s",
                    delivered,
                    stalled=True,
                ) from None
            except (av.error.FFmpegError, OSError) as exc:
                reason = _describe_av_error(exc, self.url)
                if finite:
                    raise CorruptSourceError(
                        f"{self.url.redacted}: read failed ({reason})"
                    ) from None
                raise _ConnectionLostError(f"connection lost ({reason})", delivered) from None
            if self._stop.is_set():
                raise _StopRequestedError
            if not finite:
                if time.monotonic() - last_frame_mono >= 0.95 * self._read_timeout_s:
                    # Some demuxers (RTSP) report an interrupted read as the end of stream.
                    raise _ConnectionLostError(
                        f"no data for {self._read_timeout_s:g} s", delivered, stalled=True
                    )
                raise _ConnectionLostError(
                    "the stream ended" if delivered else "no frames", delivered
                )
            if self._counts["frames_decoded"] == 0:
                raise CorruptSourceError(
                    f"{self.url.redacted}: no decodable video frames; the file may be truncated"
                )
        finally:
            container.close()
