"""`facestream bench ingest`: how fast the ingest side runs on this machine.

Prints: decode speed (every frame, PyAV, BGR arrays), RetinaFace ms per frame at batch
1, 4 and 16 at `--max-side`, and the end-to-end real-time factor of `facestream analyze`
on the video (video duration / wall time of the command run as a subprocess, process
start and model load included).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time

from worker.commands.bench_data import (
    add_video_and_weights_arguments,
    detector_weights,
    video_or_default,
)

BATCH_SIZES = (1, 4, 16)


HELP = "Decode fps, detector ms/frame by batch size, analyze real-time factor."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `bench ingest`."""
    add_video_and_weights_arguments(
        parser, "Video file (default: the Hamilton test clip in $FACESTREAM_TESTDATA)."
    )
    parser.add_argument("--max-side", type=int, default=640, metavar="PX", help="Detector input.")
    parser.add_argument("--fps", type=float, default=5.0, help="Detections per second sampled.")
    parser.add_argument("--repeats", type=int, default=3, help="Timing runs (median).")
    parser.add_argument("--skip-analyze", action="store_true", help="No end-to-end run.")


def run(args: argparse.Namespace) -> int:
    """Measure and print; returns the exit status."""
    import av
    import torch

    from ingest.sources import SourceOptions
    from models.retinaface import DetectorOptions, RetinaFaceDetector
    from models.weights import WeightsError
    from worker.commands.local_video import share_cpu_with_decoder
    from worker.logs import configure_logging
    from worker.settings import Settings

    settings = Settings()
    configure_logging(settings.log_format, "warning")
    share_cpu_with_decoder(settings, source_is_live=False)  # as analyze on a file
    video = video_or_default(args.video)
    if not video.is_file():
        print(f"facestream bench ingest: no video at {video} (pass --video)", file=sys.stderr)
        return 2
    weights = detector_weights(args.weights, settings.detector.weights)

    # Decode every frame, as the source does (threads from the settings).
    images, sampled, next_pts_s = [], [], None
    threads = SourceOptions().decode_threads
    start = time.perf_counter()
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.thread_count = threads
        first_pts_s = last_pts_s = None
        for frame in container.decode(stream):
            image = frame.to_ndarray(format="bgr24")
            pts_s = float(frame.time) if frame.time is not None else None
            images.append(image)
            if pts_s is not None:
                first_pts_s = pts_s if first_pts_s is None else first_pts_s
                last_pts_s = pts_s
                if next_pts_s is None or pts_s >= next_pts_s - 1e-6:
                    sampled.append(image)
                    next_pts_s = (pts_s if next_pts_s is None else next_pts_s) + 1 / args.fps
        rate = float(stream.average_rate or 0) or None
    decode_s = time.perf_counter() - start
    if not images:
        print(f"facestream bench ingest: no video frames in {video}", file=sys.stderr)
        return 1
    frame_s = 1 / rate if rate else 0.0
    if first_pts_s is not None and last_pts_s is not None:
        duration_s = last_pts_s - first_pts_s + frame_s
    else:
        duration_s = len(images) * frame_s
    height, width = images[0].shape[:2]
    print(f"machine: {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}")
    print(f"video: {video.name} {width}x{height}, {len(images)} frames, {duration_s:.2f} s")
    print(
        f"decode (all frames, {threads} threads): {len(images) / decode_s:.0f} frames/s "
        f"({decode_s * 1000 / len(images):.2f} ms/frame)"
    )

    try:
        options = DetectorOptions(weights=weights, max_side_px=args.max_side or None, device="cpu")
        detector = RetinaFaceDetector.from_options(options)
    except WeightsError as exc:
        print(f"facestream bench ingest: {exc}", file=sys.stderr)
        return 2
    print(
        f"detector (max side {args.max_side} px, {len(sampled)} frames sampled at {args.fps} fps):"
    )
    for batch in BATCH_SIZES:
        timing = detector.time_detection(sampled, batch, repeats=args.repeats)
        print(
            f"  batch {batch:>2}: {timing.ms_per_frame:6.1f} ms/frame "
            f"({timing.ms_per_batch:.1f} ms/batch, {timing.frames_per_s:.1f} frames/s)"
        )
    from models.blazeface import BlazeFaceDetector

    blazeface = BlazeFaceDetector.load(device="cpu")
    print("BlazeFace (crop_mode=blazeface, runs beside the detector on the same frames):")
    for batch in BATCH_SIZES:
        blaze_timing = blazeface.time_detection(sampled, batch, repeats=args.repeats)
        print(f"  batch {batch:>2}: {blaze_timing.ms_per_frame:6.2f} ms/frame")

    if not args.skip_analyze:
        command = [
            sys.executable, "-m", "worker.cli", "analyze", str(video),
            "--weights", weights, "--fps", str(args.fps), "--max-side", str(args.max_side),
            "--out", os.devnull, "--no-progress",
        ]  # fmt: skip
        walls_s: list[float] = []
        children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        for _run in range(max(1, args.repeats)):
            start = time.perf_counter()
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            walls_s.append(time.perf_counter() - start)
            if result.returncode != 0:
                print(
                    f"analyze failed ({result.returncode}):\n{result.stderr[-2000:]}",
                    file=sys.stderr,
                )
                return 1
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_s = (children.ru_utime - children_before.ru_utime) + (
            children.ru_stime - children_before.ru_stime
        )
        wall_s = statistics.median(walls_s)
        print(
            f"analyze end to end ({args.fps} fps, process start included, median of "
            f"{len(walls_s)} runs): {wall_s:.2f} s (range {min(walls_s):.2f}–{max(walls_s):.2f}) "
            f"for {duration_s:.2f} s of video = {duration_s / wall_s:.2f}x real time "
            f"(CPU time {cpu_s / len(walls_s):.2f} s per run: wall time on a loaded machine "
            "overstates it)"
        )
    return 0
