"""`facestream bench worker`: N live streams through detection and the model, one device.

The worker's own stages run in this process — each stream's `VideoSource` and pipeline
(`worker.intake`), the `detector` thread (`worker.detection`), the window queue and the
`model` thread (`worker.model_stage`, continuous batching, static tasks) — with events
counted instead of sent to Redis; no Kafka, no Redis.

Sources: the video file (default: the Hamilton test clip) read as a live camera: paced in
real time (`FACESTREAM_SOURCE__REALTIME`: frame wall time = its pts), and when it ends the
stream is started again under a new stream id, so N streams run for the whole
`--seconds`. The N streams start evenly spread over one window stride, as independent
cameras would be. `--url` takes a live URL instead (rtsp/http; every stream reads it).

Per stream count it prints: clips/s answered, windows/s offered by the detectors,
frame-to-event latency p50/p95 (the newest frame's wall time → its event handed to the
publisher), windows dropped by reason, frames the detector skipped, and whether the
streams were held: no window dropped, no frame skipped, p95 within `--max-p95-s`. Then
the most streams held and memory: peak process RSS, and on CUDA the peak allocated.

`--config tiny` (CPU, CI) builds the test fixture's shapes, `7b` the real ones (Vicuna-7B
+ ViT-L/14, CUDA); both with random weights, which ignore `</s>` so every answer is
`--max-new-tokens` long. `--model PATH` loads a real checkpoint instead.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from worker.commands.bench_data import (
    add_video_and_weights_arguments,
    detector_weights,
    video_or_default,
)
from worker.commands.facellava_common import add_model_arguments

if TYPE_CHECKING:
    from worker.answering import FaceAnswerer
    from worker.events import FaceEvent
    from worker.settings import Settings

HELD_DROP_REASONS = ("superseded", "queue_full", "stale", "model_error")
"""Drops that mean the worker did not keep up (not: streams stopped, the run's end)."""


HELP = "N live streams through detection and Face-LLaVA: streams held, clips/s, latency."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `bench worker`."""
    parser.add_argument("--streams", default="1,2,4", help="Stream counts to run, in turn.")
    parser.add_argument("--seconds", type=float, default=30.0, help="Run length per count.")
    parser.add_argument("--config", choices=("tiny", "7b"), default="tiny")
    parser.add_argument("--url", default=None, help="A live URL every stream reads instead.")
    parser.add_argument("--tasks", default="emotion", help="Tasks each stream asks.")
    parser.add_argument("--detection-fps", type=float, default=5.0, help="Per stream.")
    parser.add_argument("--max-p95-s", type=float, default=1.5, help="Held: p95 latency bound.")
    add_video_and_weights_arguments(parser, "Default: the Hamilton clip.")
    parser.add_argument(
        "--tokenizer",
        default=None,
        help="Folder with tokenizer.model for random weights (default: the tiny fixture's).",
    )
    parser.add_argument("--seed", type=int, default=0)
    add_model_arguments(parser, model_help="A real checkpoint instead of random weights.")


@dataclass
class LatencySink:
    """Stands in for the Redis publisher: counts events and their frame-to-event time."""

    latencies_s: list[float] = field(default_factory=list)
    clips: int = 0
    events: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def publish(self, event: FaceEvent) -> None:
        """Count one event (called by the model thread when its answer finished)."""
        now_s = time.time()
        with self.lock:
            self.events += 1
            self.clips += event.task == "emotion"
            self.latencies_s.append(max(0.0, now_s - event.frame_wall_time_s))


@dataclass(frozen=True)
class RunFigures:
    """What one run at N streams measured."""

    streams: int
    seconds: float
    clips_per_s: float
    offered_per_s: float
    events: int
    p50_s: float | None
    p95_s: float | None
    drops: dict[str, int]
    frames_skipped: int
    held: bool
    why_not: str


def run(args: argparse.Namespace) -> int:
    """Build the detector and the model once, run every stream count, print the figures."""
    import torch

    from worker.logs import configure_logging

    configure_logging(args.log_format, args.log_level)
    try:
        counts = sorted({int(n) for n in args.streams.split(",") if n.strip()})
    except ValueError:
        counts = []
    if not counts or min(counts) < 1 or args.seconds <= 0:
        print("--streams needs positive integers and --seconds > 0", file=sys.stderr)
        return 2
    video = video_or_default(args.video)
    if args.url is None and not video.is_file():
        print(f"facestream bench worker: no video at {video} (pass --video)", file=sys.stderr)
        return 2
    built = _build(args)
    if isinstance(built, int):
        return built
    settings, answerer, detector, described = built
    device = str(answerer.engine.model.device)
    print(f"machine: {_device_name(device)}; model: {described}")
    print(
        f"engine: {answerer.engine.max_visuals} KV slots per modality, admission batch "
        f"{answerer.engine.max_batch_clips}, {answerer.engine.max_new_tokens} new tokens; "
        f"tasks {args.tasks}; {args.detection_fps:g} detections/s per stream"
    )
    source = args.url or f"{video.name} in a loop, paced in real time"
    print(f"sources: {source}; {args.seconds:g} s per stream count")
    figures = []
    for count in counts:
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        result = _run_streams(count, args, settings, answerer, detector, video)
        figures.append(result)
        _print_run(result)
    held = [f.streams for f in figures if f.held]
    print(f"streams held: {max(held) if held else 0} (of {', '.join(map(str, counts))} tried)")
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    memory = f"memory: peak process RSS {rss_mib:.0f} MiB"
    if device.startswith("cuda"):
        memory += f"; GPU max allocated {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
    print(memory)
    return 0


def _build(args: argparse.Namespace) -> tuple[Settings, FaceAnswerer, object, str] | int:
    import torch

    from models.facellava.batch_limits import resolve_batch_clips
    from models.facellava.engine import GenerationEngine
    from models.facellava.prompts import PromptTokenizer
    from worker.answering import FaceAnswerer
    from worker.commands.bench_shapes import fixture_checkpoint, random_model, shape_config
    from worker.commands.facellava_common import (
        load_for_cli,
        model_options,
        resolve_device,
        resolve_dtype,
    )
    from worker.detection import load_detector
    from worker.settings import Settings

    options = model_options(args)
    device = resolve_device(options.device)
    if args.config == "7b" and device == "cpu" and args.model is None:
        print("bench worker --config 7b needs a CUDA device; use --config tiny", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    if args.model is not None:
        loaded, options, device = load_for_cli(args)
        model, tokenizer, eos = loaded.model, loaded.tokenizer, loaded.eos_token_id
        described = f"checkpoint {options.model}"
        random_weights = False
    else:
        dtype = resolve_dtype(args, options, device)
        options = options.model_copy(update={"dtype": dtype})
        tokenizer = PromptTokenizer(args.tokenizer or str(fixture_checkpoint()))
        model = random_model(
            shape_config(args.config), dtype, device, options.attn_implementation, args.seed
        )
        eos = tokenizer.eos_id
        described = f"{args.config} shapes, random weights ({dtype}, EOS ignored)"
        random_weights = True
    engine = GenerationEngine(
        model,
        tokenizer,
        max_new_tokens=options.max_new_tokens,
        max_batch_clips=resolve_batch_clips(options.max_batch_clips, model),
        max_visuals=options.engine_visuals,
        memory_fraction=options.kv_memory_fraction,
        ignore_eos=random_weights,
        eos_token_id=eos,
        cuda_graphs=options.cuda_graphs,
    )
    answerer = FaceAnswerer(engine, model_id=described, worker_id="bench")
    base = Settings()
    weights = detector_weights(args.weights, base.detector.weights)
    settings = Settings(
        worker_id="bench",
        source={**base.source.model_dump(), "realtime": True, "allow_file": True},
        detector={**base.detector.model_dump(), "weights": weights, "device": device},
    )
    detector = load_detector(settings)  # the worker's own: RetinaFace + its crop regions
    return settings, answerer, detector, described


def _run_streams(
    count: int,
    args: argparse.Namespace,
    settings: Settings,
    answerer: FaceAnswerer,
    detector: object,
    video: Path,
) -> RunFigures:
    """Run `count` streams for `args.seconds` through fresh stages around the shared models."""
    from worker.admission import Admission
    from worker.detection import DetectionStage
    from worker.intake import StreamRecord, StreamTable
    from worker.metrics import Metrics
    from worker.model_stage import EngineWindows, ModelStage
    from worker.scheduler import WindowQueue
    from worker.specs import StreamSpec

    streams = StreamTable()
    queue = WindowQueue(settings.scheduler.model_queue_windows, settings.scheduler.max_window_age_s)
    metrics = Metrics()
    sink = LatencySink()
    wake = threading.Event()
    detection = DetectionStage.from_settings(
        settings,
        detector,  # type: ignore[arg-type]
        streams,
        queue,
        metrics,
        wake=wake,
        admission=Admission.from_settings(settings.scheduler),
    )
    model = ModelStage.from_settings(settings, EngineWindows(answerer), queue, sink, metrics)
    url = args.url or str(video.resolve())
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    loops = [0] * count
    records: list[StreamRecord | None] = [None] * count
    retired: list[StreamRecord] = []

    def start(i: int) -> None:
        spec = StreamSpec(
            stream_id=f"bench-{i}-{loops[i]}",
            url=url,
            tasks=tasks,
            detection_fps=args.detection_fps,
        )
        loops[i] += 1
        record = StreamRecord.running(spec, settings)
        streams.put(record)
        record.start(wake)
        records[i] = record

    detection.start()
    model.start()
    began = time.monotonic()
    stagger_s = settings.windows.stride_s / count
    end = began + args.seconds
    while time.monotonic() < end:
        now = time.monotonic()
        for i in range(count):
            record = records[i]
            if record is None and now >= began + i * stagger_s:
                start(i)
            elif record is not None and (record.flushed or record.failed):
                streams.remove(record)  # the file ended: the camera goes on as a new stream
                retired.append(record)
                start(i)
        time.sleep(0.05)
    elapsed = time.monotonic() - began
    with sink.lock:
        clips, events, latencies = sink.clips, sink.events, sorted(sink.latencies_s)
    for record in [*retired, *(r for r in records if r is not None)]:
        record.stop()
    offered = sum(
        r.pipeline.stats.emitted
        for r in [*retired, *(r for r in records if r is not None)]
        if r.pipeline is not None
    )
    drops = queue.drops
    skipped = sum(
        r.source.stats.frames_dropped for r in [*retired, *records] if r and r.source is not None
    )
    detection.stop()
    model.stop()
    queue.close()
    detection.join(10)
    model.join(60)  # the engine finishes what it holds: it must be idle for the next run
    p50 = statistics.median(latencies) if latencies else None
    p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] if latencies else None
    late = [f"{reason} {drops[reason]}" for reason in HELD_DROP_REASONS if drops[reason]]
    problems = []
    if late:
        problems.append("windows dropped: " + ", ".join(late))
    if skipped:
        problems.append(f"{skipped} frames skipped (detector behind)")
    if p95 is None:
        problems.append("no event")
    elif p95 > args.max_p95_s:
        problems.append(f"p95 {p95:.2f} s > {args.max_p95_s:g} s")
    return RunFigures(
        streams=count,
        seconds=elapsed,
        clips_per_s=clips / elapsed,
        offered_per_s=offered / elapsed,
        events=events,
        p50_s=p50,
        p95_s=p95,
        drops={k: v for k, v in drops.items() if v},
        frames_skipped=skipped,
        held=not problems,
        why_not="; ".join(problems),
    )


def _print_run(f: RunFigures) -> None:
    latency = (
        f"frame-to-event p50 {f.p50_s:.2f} s, p95 {f.p95_s:.2f} s"
        if f.p50_s is not None and f.p95_s is not None
        else "frame-to-event: no event"
    )
    drops = ", ".join(f"{k} {v}" for k, v in f.drops.items()) or "none"
    print(
        f"{f.streams} streams, {f.seconds:.1f} s: {f.clips_per_s:.2f} clips/s answered "
        f"({f.offered_per_s:.2f} windows/s offered), {f.events} events; {latency}; "
        f"windows dropped: {drops}; frames skipped: {f.frames_skipped}; "
        f"held: {'yes' if f.held else 'no (' + f.why_not + ')'}"
    )


def _device_name(device: str) -> str:
    import os

    import torch

    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(0)}"
    return f"CPU, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
