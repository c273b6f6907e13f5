"""What `analyze` (and `bench ingest`) need to know before decoding a local video: its
frame size and duration from the file's header, how deep to decode ahead, and how many
torch threads leave the decoder its cores."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from worker.settings import Settings

ANALYZE_QUEUE_FRAMES = 64  # ≈ 45 MB of 640×360 frames: decoding runs ahead of torch start-up
# ... but never more than this many bytes of frames at `source.max_pixels` (at least 2 frames).
ANALYZE_QUEUE_BYTES = 512 * 2**20


def analyze_queue_frames(frame_pixels: int) -> int:
    """Decode-ahead depth: `ANALYZE_QUEUE_FRAMES`, cut so the queue holds ≤ `ANALYZE_QUEUE_BYTES`
    of frames of `frame_pixels` (the file's frame size, or `max_pixels` when unknown)."""
    return max(2, min(ANALYZE_QUEUE_FRAMES, ANALYZE_QUEUE_BYTES // (frame_pixels * 3)))


_T = TypeVar("_T")


def _probe_local_file(source_url: str, read: Callable[[Any], _T | None]) -> _T | None:
    """`read(container)` on a local file's header; None for URLs, missing files and files
    FFmpeg cannot open."""
    path = Path(source_url.removeprefix("file:"))
    if "://" in source_url or not path.is_file():
        return None
    import av

    from ingest.urls import UnsupportedURLError, check_source_url

    try:
        url = check_source_url(str(path), allow_file=True)
    except UnsupportedURLError:
        return None  # the source itself reports why
    # The same whitelists as the source: a local "video" that is really a playlist must
    # not make FFmpeg fetch other files or hosts while its header is read.
    options = {
        "protocol_whitelist": url.protocol_whitelist,
        "format_whitelist": url.format_whitelist,
    }
    try:
        with av.open(str(path), options=options) as container:
            return read(container)
    except av.FFmpegError:
        return None


def file_frame_pixels(source_url: str) -> int | None:
    """Width × height of a local file's video (from its header); None for URLs or unknown."""

    def pixels(container: Any) -> int | None:
        if not container.streams.video:
            return None
        context = container.streams.video[0].codec_context
        return int(context.width * context.height) or None

    return _probe_local_file(source_url, pixels)


def share_cpu_with_decoder(settings: Settings, source_is_live: bool) -> None:
    """On CPU, size torch's thread pool so it does not fight the decoder.

    A live source decodes all the time: torch gets the cores the decoder leaves
    (oversubscribed OpenMP threads spin: on 2 cores, 2 torch threads beside a busy decoder
    made analyze ~2.5× slower). A file decodes ahead while torch loads and then mostly
    waits, so torch gets every core. An explicit OMP_NUM_THREADS wins.
    """
    import torch

    if "OMP_NUM_THREADS" in os.environ or settings.detector.device == "cuda":
        return
    if settings.detector.device == "auto" and torch.cuda.is_available():
        return
    cpus = os.cpu_count() or 1
    busy = settings.source.decode_threads if source_is_live else 0
    torch.set_num_threads(max(1, cpus - busy))


def file_duration_s(source_url: str) -> float | None:
    """Duration of a local file (for the progress bar); None for URLs or when unknown."""

    def duration_s(container: Any) -> float | None:
        return None if container.duration is None else container.duration / 1_000_000

    return _probe_local_file(source_url, duration_s)
