"""`facestream detect SOURCE`: RetinaFace on a video, one JSON line per processed frame.

Each line is `{"frame_index", "pts_s", "boxes", "scores", "landmarks", "crops"}` in
original-frame pixels: `frame_index` is the 0-based decode-order index, boxes are
[x1, y1, x2, y2], landmarks five [x, y] points per face (eyes, nose tip, mouth corners),
crops the [x0, y0, x1, y1] region of the frame (whole pixels, inside the frame) that each
face's Face-LLaVA crop is cut from (the `windows.crop_mode` setting; default the authors').
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from ingest.crop_geometry import CropMode
    from ingest.frames import Frame
    from ingest.sources import SourceOptions
    from models.detections import Detections


HELP = "Detect faces in a video; print one JSON line per processed frame."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `detect`."""
    parser.add_argument("source", metavar="SOURCE", help="Video file path or URL.")
    parser.add_argument(
        "--every", type=_positive_int, default=1, metavar="N", help="Every Nth decoded frame."
    )
    parser.add_argument(
        "--max-side",
        type=int,
        default=None,
        metavar="PX",
        help="Resize so the longer side ≤ PX before detection; 0 = native size "
        "(default: the detector setting).",
    )
    parser.add_argument(
        "--weights", default=None, metavar="PATH|REPO:FILE", help="RetinaFace weights."
    )
    parser.add_argument(
        "--weights-sha256", default=None, metavar="HEX", help="Expected sha256 of the weights."
    )
    parser.add_argument(
        "--score-threshold", type=float, default=None, metavar="P", help="Minimum face score (0.5)."
    )
    parser.add_argument(
        "--nms-threshold", type=float, default=None, metavar="IOU", help="NMS IoU threshold (0.4)."
    )
    parser.add_argument(
        "--batch",
        type=_positive_int,
        default=None,
        metavar="N",
        help="Frames per detection batch (default: the detector setting).",
    )
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default=None, help="Where to run."
    )


def run(args: argparse.Namespace) -> int:
    """Detect faces in SOURCE and print the JSON lines; returns the exit status."""
    import pydantic

    from ingest.sources import SourceError, UnsupportedURLError
    from models.devices import DeviceUnavailableError
    from models.overrides import with_overrides
    from models.retinaface import DetectorCheckpointError, RetinaFaceDetector
    from models.weights import WeightsError
    from worker.logs import configure_logging
    from worker.settings import Settings

    settings = Settings()
    configure_logging(settings.log_format, settings.log_level)
    overrides: dict[str, Any] = {
        "weights": args.weights,
        "weights_sha256": args.weights_sha256,
        "score_threshold": args.score_threshold,
        "nms_threshold": args.nms_threshold,
        "max_batch": args.batch,
        "device": args.device,
    }
    overrides = {key: value for key, value in overrides.items() if value is not None}
    if args.max_side is not None:
        overrides["max_side_px"] = args.max_side or None
    try:
        options = with_overrides(settings.detector, overrides)
        from ingest.authors_boxes import with_crop_boxes

        detector = with_crop_boxes(
            RetinaFaceDetector.from_options(options), settings.windows.crop_mode, options.device
        )
    except (
        pydantic.ValidationError,
        WeightsError,
        DetectorCheckpointError,
        DeviceUnavailableError,
    ) as exc:
        print(f"facestream detect: {exc}", file=sys.stderr)
        return 2

    crops = _CropGeometry(settings.windows.crop_mode, settings.windows.crop_margin)
    batch: list[Frame] = []
    try:
        for frame in _frames(args.source, args.every, settings.source):
            batch.append(frame)
            if len(batch) >= options.max_batch:
                _print_batch(batch, detector.detect([f.image_bgr for f in batch]), crops)
                batch = []
    except (SourceError, UnsupportedURLError) as exc:
        print(f"facestream detect: {exc}", file=sys.stderr)
        return 1
    finally:
        if batch:
            _print_batch(batch, detector.detect([f.image_bgr for f in batch]), crops)
    return 0


# Sampling here is by count (every Nth decoded frame), so the source keeps every frame.
_EVERY_FRAME_FPS = 1e6
# A one-shot command on a live source that cannot be opened exits (1) after this many failed
# opens in a row, unless FACESTREAM_SOURCE__GIVE_UP_AFTER_FAILURES sets another number.
CLI_GIVE_UP_AFTER_FAILURES = 3


def _frames(source: str, every: int, options: SourceOptions) -> Iterator[Frame]:
    """Every `every`-th decoded frame of `source` (local files allowed: operator command)."""
    from ingest.sources import VideoSource

    options = options.model_copy(
        update={
            "allow_file": True,
            "sample_fps": _EVERY_FRAME_FPS,
            "give_up_after_failures": options.give_up_after_failures or CLI_GIVE_UP_AFTER_FAILURES,
        }
    )
    for frame in VideoSource(source, options, stream_id="detect").frames():
        if frame.index % every == 0:
            yield frame


@dataclass(frozen=True)
class _CropGeometry:
    mode: CropMode
    margin: float

    def regions(self, frame: Frame, faces: Detections) -> list[list[int]]:
        from ingest.crop_geometry import frame_region_xyxy

        frame_wh = (frame.image_bgr.shape[1], frame.image_bgr.shape[0])
        return [
            list(frame_region_xyxy(box, frame_wh, self.mode, self.margin, crop_box))
            for box, crop_box in zip(faces.xyxy, _crop_boxes(faces), strict=True)
        ]


def _crop_boxes(faces: Detections) -> list[np.ndarray | None]:
    """Each face's BlazeFace box (`crop_mode=blazeface`), or None per face."""
    if faces.crop_boxes is None:
        return [None] * len(faces)
    return list(faces.crop_boxes)


def _print_batch(frames: list[Frame], detections: list[Detections], crops: _CropGeometry) -> None:
    for frame, faces in zip(frames, detections, strict=True):
        line = {
            "frame_index": frame.index,
            "pts_s": round(frame.pts_s, 6),
            "boxes": [[round(float(v), 3) for v in box] for box in faces.xyxy],
            "scores": [round(float(s), 5) for s in faces.scores],
            "landmarks": [
                [[round(float(x), 3), round(float(y), 3)] for x, y in points]
                for points in faces.landmarks
            ],
            "crops": crops.regions(frame, faces),
        }
        sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {value}")
    return value
