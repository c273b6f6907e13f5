"""How well the authors' face detector agrees with itself: the ceiling for any crop geometry.

    python -m scripts.blazeface_consistency [--testdata DIR]

Needs `mediapipe==0.10.21` (not a project dependency: run it from a separate virtual
environment with mediapipe, av, opencv-python-headless and numpy, from the repository
root). MediaPipe's Tasks `FaceDetector` with default options and the short-range BlazeFace
model shipped in that wheel (`modules/face_detection/face_detection_short_range.tflite`)
is checked first to reproduce every box of `reference/blazeface_*.json` on every frame.
Then each clip's frames are shifted by (3, 2) pixels (cropping the top-left edge), mirrored,
or resized ×0.75 / ×1.5, the detector runs again, and each face's crop region (the
authors' cut, mapped back to the original frame) is compared with the reference's: the
mean and 10th percentile IoU, and how many reference faces have no face there (box IoU
< 0.3) or gain a new one. A geometry computed from another detector can be expected to
follow the reference no closer than the reference follows itself under such changes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import av
import cv2
import mediapipe as mp
import numpy as np
from mediapipe.tasks.python import BaseOptions, vision

from ingest.crop_geometry import authors_cut_xyxy

CLIPS = (
    "short_hamilton_clip",
    "facellava_facial_expr_example_1",
    "facellava_facial_expr_example_2",
)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / max(union, 1e-9)


def _boxes(detector: vision.FaceDetector, rgb: np.ndarray) -> list[tuple[int, int, int, int]]:
    image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb))
    return [
        (
            d.bounding_box.origin_x,
            d.bounding_box.origin_y,
            d.bounding_box.width,
            d.bounding_box.height,
        )
        for d in detector.detect(image).detections
    ]


def _back(region: np.ndarray, kind: str, width: int) -> np.ndarray:
    """A region of the transformed frame in original-frame pixels."""
    x0, y0, x1, y1 = region
    if kind == "shift":
        return np.array([x0 + 3, y0 + 2, x1 + 3, y1 + 2], float)
    if kind == "mirror":
        return np.array([width - x1, y0, width - x0, y1], float)
    scale = {"x0.75": 0.75, "x1.5": 1.5}[kind]
    return np.array([x0, y0, x1, y1], float) / scale


TRANSFORMS = {
    "shift": lambda im: im[2:, 3:],
    "mirror": lambda im: im[:, ::-1],
    "x0.75": lambda im: cv2.resize(im, (round(im.shape[1] * 0.75), round(im.shape[0] * 0.75))),
    "x1.5": lambda im: cv2.resize(im, (round(im.shape[1] * 1.5), round(im.shape[0] * 1.5))),
}


def main() -> None:
    """Print the figures (see the module doc)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--testdata", type=Path, default=Path("../shared/testdata"))
    args = parser.parse_args()
    model = Path(mp.__file__).parent / "modules/face_detection/face_detection_short_range.tflite"
    detector = vision.FaceDetector.create_from_options(
        vision.FaceDetectorOptions(base_options=BaseOptions(model_asset_path=str(model)))
    )
    every: dict[str, list[float]] = {kind: [] for kind in TRANSFORMS}
    every_lost = dict.fromkeys(TRANSFORMS, 0)
    every_total = 0
    for name in CLIPS:
        reference = json.loads((args.testdata / "reference" / f"blazeface_{name}.json").read_text())
        width, height = reference["meta"]["frame_size_wh"]
        video = args.testdata / "videos" / f"{name}.mp4"
        with av.open(str(video)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        theirs = [[tuple(f["origin_xywh"]) for f in fr["faces"]] for fr in reference["frames"]]
        same = sum(
            sorted(_boxes(detector, im)) == sorted(t) for im, t in zip(frames, theirs, strict=True)
        )
        print(f"{name}: reference boxes reproduced on {same}/{len(frames)} frames")
        every_total += sum(len(faces) for faces in theirs)
        for kind, transform in TRANSFORMS.items():
            ious, lost, found, total = [], 0, 0, 0
            for image, faces in zip(frames, theirs, strict=True):
                moved = np.ascontiguousarray(transform(image))
                frame_wh = (moved.shape[1], moved.shape[0])
                again = [
                    (
                        _back(np.array([x, y, x + w, y + h], float), kind, frame_wh[0]),
                        _back(
                            np.array(authors_cut_xyxy((x, y, x + w, y + h), frame_wh)),
                            kind,
                            frame_wh[0],
                        ),
                    )
                    for x, y, w, h in _boxes(detector, moved)
                ]
                pairs = sorted(
                    (
                        (_iou(np.array([x, y, x + w, y + h], float), box), i, j)
                        for i, (x, y, w, h) in enumerate(faces)
                        for j, (box, _) in enumerate(again)
                    ),
                    reverse=True,
                )
                used_i: set[int] = set()
                used_j: set[int] = set()
                for value, i, j in pairs:
                    if value < 0.3 or i in used_i or j in used_j:
                        continue
                    used_i.add(i)
                    used_j.add(j)
                    x, y, w, h = faces[i]
                    cut = np.array(authors_cut_xyxy((x, y, x + w, y + h), (width, height)), float)
                    ious.append(_iou(cut, again[j][1]))
                total += len(faces)
                lost += len(faces) - len(used_i)
                found += len(again) - len(used_j)
            values = np.array(ious)
            every[kind] += ious
            every_lost[kind] += lost
            print(
                f"  {kind:6s} crop IoU with itself: mean {values.mean():.3f}  "
                f"p10 {np.percentile(values, 10):.3f}  faces lost {lost}/{total} "
                f"({100 * lost / total:.1f} %), new {found}"
            )

    print("all faces:")
    for kind, ious in every.items():
        values = np.array(ious)
        print(
            f"  {kind:6s} mean {values.mean():.3f}  p10 {np.percentile(values, 10):.3f}  "
            f"lost {every_lost[kind]}/{every_total} ({100 * every_lost[kind] / every_total:.1f} %)"
        )


if __name__ == "__main__":
    main()
