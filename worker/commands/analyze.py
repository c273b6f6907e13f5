"""`facestream analyze SOURCE`: the whole ingest pipeline in one process, no Kafka or Redis.

Reads a video (file path or URL), samples it at `--fps`, detects faces in small batches,
tracks them, and cuts per-track clip windows. Writes JSON lines (stdout, or `--out`):

- `{"type": "window", "stream_id", "track_id", "window_start_s", "window_end_s",
  "box_xyxy", "detector_score", "clip_frame_pts_s", "image_pts_s", "quality"}` per
  emitted window (plus `"clip_path"`, `"image_path"` with `--save-clips`);
- `{"type": "track", "stream_id", "track_id", "first_pts_s", "last_pts_s", "detections"}`
  when a track ends (every track still alive is ended at the end of the source);
- one `{"type": "summary", ...}` with frame and window counters at the end.

`--save-clips DIR` also writes each window as an mp4 of its 8 crops and a png of its best
crop, plus `overview.mp4` and `contact_sheet.png`: every detector box (confirmed tracks
with their id and, with `--model`, their newest emotion and age beside the box), stream
time on every frame, and a legend.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from worker.commands.detect import CLI_GIVE_UP_AFTER_FAILURES
from worker.commands.facellava_common import add_model_arguments
from worker.commands.local_video import (
    ANALYZE_QUEUE_BYTES,
    analyze_queue_frames,
    file_duration_s,
    file_frame_pixels,
    share_cpu_with_decoder,
)

if TYPE_CHECKING:
    from ingest.tracking import TrackRecord
    from ingest.windows import WindowRequests
    from worker.settings import Settings

# The seam for the model stage: given a window's requests, return extra JSONL records
# (e.g. FaceEvents as dicts). `analyze` calls it for every emitted window.
WindowHandler = Callable[["WindowRequests"], list[dict[str, Any]]]

DETECT_BATCH_FRAMES = 8  # small: little latency, most of batching's gain on CPU


HELP = "Detect, track and window faces in one video; JSON lines out (no Kafka/Redis)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `analyze`."""
    parser.add_argument("source", metavar="SOURCE", help="Video file path or URL.")
    parser.add_argument(
        "--out", type=Path, default=None, metavar="FILE.jsonl", help="Default stdout."
    )
    parser.add_argument(
        "--save-clips", type=Path, default=None, metavar="DIR", help="Write clips/images/overview."
    )
    parser.add_argument("--weights", default=None, metavar="PATH|REPO:FILE", help="RetinaFace.")
    parser.add_argument("--fps", type=float, default=None, help="Detections per second (5).")
    parser.add_argument("--window-s", type=float, default=None, help="Clip window length (2.5).")
    parser.add_argument("--stride-s", type=float, default=None, help="Window stride (2.0).")
    parser.add_argument("--max-side", type=int, default=None, metavar="PX", help="Detector input.")
    parser.add_argument("--stream-id", default="analyze", help="stream_id in the records.")
    parser.add_argument("--no-progress", action="store_true", help="No progress bar on stderr.")
    model = parser.add_argument_group(
        "model stage",
        "With --model (or --tasks), each window is answered by Face-LLaVA and "
        'a FaceEvent record (`"type": "event"`) is written per task.',
    )
    model.add_argument(
        "--tasks",
        default=None,
        help="Comma-separated: emotion,age,attributes,action_units (default emotion).",
    )
    add_model_arguments(model)


def run(args: argparse.Namespace) -> int:
    """Run the pipeline over SOURCE and write the records; returns the exit status."""
    import pydantic

    from worker.logs import configure_logging
    from worker.settings import Settings

    try:
        settings = _settings_from_args(Settings(), args)
    except pydantic.ValidationError as exc:
        print(f"facestream analyze: invalid option: {exc}", file=sys.stderr)
        return 2
    configure_logging(args.log_format, args.log_level)
    mistake = output_mistake(args.out, args.save_clips)
    if mistake is not None:  # before the slow model load
        print(f"facestream analyze: {mistake}", file=sys.stderr)
        return 2
    try:
        handler = model_stage(args)
    except ValueError as exc:
        print(f"facestream analyze: {exc}", file=sys.stderr)
        return 2
    out: IO[str] = sys.stdout if args.out is None else args.out.open("w", encoding="utf-8")
    try:
        return analyze(
            settings,
            args.source,
            out,
            args.stream_id,
            args.save_clips,
            not args.no_progress,
            handler,
        )
    finally:
        if out is not sys.stdout:
            out.close()


def output_mistake(out: Path | None, save_clips: Path | None) -> str | None:
    """What is wrong with `--out` / `--save-clips` (one line), or None."""
    if out is not None and not out.parent.is_dir():
        return f"--out {out}: folder {out.parent} does not exist; create it first"
    if out is not None and out.is_dir():
        return f"--out {out} is a folder; give a file name like {out / 'events.jsonl'}"
    if save_clips is not None:
        existing = next(p for p in (save_clips, *save_clips.parents) if p.exists())
        if not existing.is_dir():
            return (
                f"--save-clips {save_clips}: {existing} is a file; give a folder "
                "(it is created if missing)"
            )
    return None


def model_stage(args: argparse.Namespace) -> WindowHandler | None:
    """The Face-LLaVA stage when `--model` or `--tasks` is given: window → FaceEvent records."""
    if args.model is None and args.tasks is None:
        return None
    from models.facellava.answers import Task
    from worker.answering import FaceAnswerer
    from worker.commands.facellava_common import load_for_cli
    from worker.scheduler import WindowJob

    names = [name.strip() for name in (args.tasks or "emotion").split(",") if name.strip()]
    valid = [task.value for task in Task]
    unknown = [name for name in names if name not in valid]
    if unknown or not names:
        raise ValueError(
            f"--tasks: unknown task {', '.join(unknown) or '(none given)'}; "
            f"give one or more of {','.join(valid)}"
        )
    tasks = tuple(Task(name) for name in names)
    loaded, options, _device = load_for_cli(args)
    answerer = FaceAnswerer.from_loaded(loaded, options, worker_id="analyze")

    def answer(requests: WindowRequests) -> list[dict[str, Any]]:
        events = answerer.answer([WindowJob(requests, tasks)])
        return [{"type": "event", **event.model_dump(mode="json")} for event in events]

    return answer


def analyze(
    settings: Settings,
    source_url: str,
    out: IO[str],
    stream_id: str,
    save_clips: Path | None = None,
    progress: bool = True,
    handler: WindowHandler | None = None,
) -> int:
    """Source → detector → tracker → windows, records to `out`; returns the exit status."""
    from tqdm import tqdm

    from ingest.pipeline import StreamPipeline, run_stream
    from ingest.sources import SourceError, VideoSource
    from ingest.urls import UnsupportedURLError, redact_url

    try:
        source = VideoSource(source_url, settings.source, stream_id=stream_id)
    except UnsupportedURLError as exc:
        print(f"facestream analyze: {exc}", file=sys.stderr)
        return 2
    # Start decoding before torch loads: the reader thread fills its queue meanwhile.
    source_frames = source.frames()
    try:
        first = list(itertools.islice(source_frames, 1))
    except SourceError as exc:
        print(f"facestream analyze: {exc}", file=sys.stderr)
        return 1

    from models.weights import WeightsError
    from worker.annotate import AnnotationError, OverviewWriter, save_window
    from worker.detection import load_detector

    share_cpu_with_decoder(settings, source.is_live)
    try:
        detector = load_detector(settings)
    except WeightsError as exc:
        source.close()
        print(f"facestream analyze: {exc}", file=sys.stderr)
        return 2
    sample_fps = settings.source.sample_fps
    pipeline = StreamPipeline(stream_id, sample_fps, settings.tracker, settings.windows)
    overview = (
        OverviewWriter(save_clips, sample_fps, lag_s=settings.windows.window_s)
        if save_clips is not None
        else None
    )
    # The overview draws every box the detector found, not only confirmed tracks.
    seen = _RecordingDetector(detector) if overview is not None else None
    duration_s = file_duration_s(source_url)
    bar = tqdm(
        total=None if duration_s is None else round(duration_s, 1),
        unit="s",
        desc=Path(source_url).name if duration_s is not None else redact_url(source_url)[-40:],
        file=sys.stderr,
        disable=not progress,
        bar_format="{l_bar}{bar}| {n:.1f}/{total_fmt} s [{elapsed}<{remaining}]",
    )
    frames = 0
    started = time.perf_counter()

    def write(record: dict[str, Any]) -> None:
        out.write(json.dumps(record, separators=(",", ":")) + "\n")

    try:
        for step in run_stream(
            itertools.chain(first, source_frames), seen or detector, pipeline, DETECT_BATCH_FRAMES
        ):
            if step.frame is not None:
                frames += 1
                bar.update(max(round(step.frame.pts_s, 1) - bar.n, 0))
                if overview is not None and seen is not None:
                    overview.add(step.frame, step.faces, seen.next_detections())
            for requests in step.windows:
                record = window_record(requests)
                if save_clips is not None:
                    clip_path, image_path = save_window(requests, save_clips)
                    record["clip_path"], record["image_path"] = str(clip_path), str(image_path)
                write(record)
                if handler is not None:
                    for extra in handler(requests):
                        write(extra)
                        if overview is not None and extra.get("type") == "event":
                            overview.answers.add(_event_of(extra))
            for track in step.ended_tracks:
                write(track_record(stream_id, track))
            out.flush()
        if bar.total is not None:
            bar.update(bar.total - bar.n)  # the last frame starts before the file's end
    except SourceError as exc:
        print(f"facestream analyze: {exc}", file=sys.stderr)
        return 1
    except AnnotationError as exc:
        print(f"facestream analyze: {exc}", file=sys.stderr)
        return 1
    finally:
        bar.close()
        if overview is not None:
            overview.close()
    wall_s = time.perf_counter() - started
    write(
        {
            "type": "summary",
            "stream_id": stream_id,
            "frames": frames,
            "wall_s": round(wall_s, 3),
            **{
                "windows" if k == "emitted" else f"windows_{k}": v
                for k, v in asdict(pipeline.stats).items()
            },
        }
    )
    return 0


class _RecordingDetector:
    """Passes detection through and keeps each frame's detections, in order, until taken."""

    def __init__(self, detector: Any) -> None:
        self._detector = detector
        self._pending: collections.deque = collections.deque()

    def detect(self, images_bgr: list) -> list:
        detections = self._detector.detect(images_bgr)
        self._pending.extend(detections)
        return detections

    def next_detections(self) -> Any:
        """The detections of the next frame the pipeline yielded (same order as detected)."""
        return self._pending.popleft() if self._pending else None


def _event_of(record: dict[str, Any]) -> Any:
    from worker.events import FaceEvent

    return FaceEvent.model_validate({k: v for k, v in record.items() if k != "type"})


def window_record(requests: WindowRequests) -> dict[str, Any]:
    """The JSONL record of one emitted window."""
    info = requests.clip.window
    return {
        "type": "window",
        "stream_id": info.stream_id,
        "track_id": info.track_id,
        "window_start_s": round(info.window_start_s, 3),
        "window_end_s": round(info.window_end_s, 3),
        "box_xyxy": [round(v, 1) for v in info.box_xyxy],
        "detector_score": round(info.detector_score, 4),
        "clip_frame_pts_s": [round(t, 3) for t in requests.clip.frame_pts_s],
        "image_pts_s": round(requests.image.frame_pts_s, 3),
        "quality": round(requests.image.quality, 4),
    }


def track_record(stream_id: str, track: TrackRecord) -> dict[str, Any]:
    """The JSONL record of one ended track."""
    return {
        "type": "track",
        "stream_id": stream_id,
        "track_id": track.track_id,
        "first_pts_s": round(track.first_pts_s, 3),
        "last_pts_s": round(track.last_pts_s, 3),
        "detections": track.detections,
    }


def _settings_from_args(settings: Settings, args: argparse.Namespace) -> Settings:
    """Settings (env) with the command-line overrides; local files allowed."""
    # Local files allowed; a deeper frame queue lets decoding run ahead while torch loads.
    max_pixels = settings.source.max_pixels
    source: dict[str, Any] = {
        "allow_file": True,
        "queue_frames": analyze_queue_frames(
            min(file_frame_pixels(args.source) or max_pixels, max_pixels)
        ),
        "queue_bytes": ANALYZE_QUEUE_BYTES,  # the frame count above already fits in it
        # A camera that cannot be opened ends the command (exit 1) instead of waiting for ever.
        "give_up_after_failures": settings.source.give_up_after_failures
        or CLI_GIVE_UP_AFTER_FAILURES,
    }
    if args.fps is not None:
        source["sample_fps"] = args.fps
    windows = {
        k: v for k, v in (("window_s", args.window_s), ("stride_s", args.stride_s)) if v is not None
    }
    detector: dict[str, Any] = {}
    if args.weights is not None:
        detector["weights"] = args.weights
    if args.max_side is not None:
        detector["max_side_px"] = args.max_side or None
    return type(settings).model_validate(
        {
            **settings.model_dump(),
            "source": {**settings.source.model_dump(), **source},
            "windows": {**settings.windows.model_dump(), **windows},
            "detector": {**settings.detector.model_dump(), **detector},
        }
    )
