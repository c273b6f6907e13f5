"""Draw our Face-LLaVA crop beside the authors' on a test frame: `docs/crop_example.png`.

    python -m scripts.crop_picture [--testdata DIR] [--frame N] [--out PATH]

Runs our RetinaFace on the Hamilton test clip and, without `--frame`, picks the frame
with exactly one face of the authors' detector whose crop IoU is closest to the clip's
median (a typical frame, not the best one). Left: the frame with our box (thin green),
our crop region (green), the previous `box_corner` region (blue) and the authors' region
(red). Right: the 256×256 crops, ours and theirs, as the model receives them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from ingest.crop_geometry import crop_region_xyxy
from ingest.crops import crop_face
from models.retinaface import DetectorOptions, RetinaFaceDetector
from scripts.crop_geometry_fit import box_iou, decode_bgr

CLIP = "short_hamilton_clip"
GREEN, BLUE, RED, WHITE = (0, 200, 0), (255, 128, 0), (0, 0, 255), (255, 255, 255)


def _label(image: np.ndarray, text: str, colour: tuple[int, int, int]) -> np.ndarray:
    bar = np.zeros((28, image.shape[1], 3), np.uint8)
    cv2.putText(bar, text, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, colour, 1, cv2.LINE_AA)
    return np.vstack([bar, image])


def main() -> None:
    """Write the picture (see the module doc)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--testdata", type=Path, default=Path("../shared/testdata"))
    parser.add_argument("--frame", type=int, default=None, help="Frame index to draw.")
    parser.add_argument("--out", type=Path, default=Path("docs/crop_example.png"))
    args = parser.parse_args()
    detector = RetinaFaceDetector.from_options(
        DetectorOptions(
            weights=str(args.testdata / "weights" / "retinaface_mobilenet0.25_Final.pth"),
            device="cpu",
        )
    )
    reference = json.loads((args.testdata / "reference" / f"blazeface_{CLIP}.json").read_text())
    frames = list(decode_bgr(args.testdata / "videos" / f"{CLIP}.mp4"))
    frame_wh = (frames[0].shape[1], frames[0].shape[0])
    # Per single-face frame: (frame index, our box, their crop, IoU).
    candidates = []
    for index, faces in enumerate(
        detector.detect(frames[i : i + 8]) for i in range(0, len(frames), 8)
    ):
        for offset, detections in enumerate(faces):
            frame_index = index * 8 + offset
            theirs = reference["frames"][frame_index]["faces"]
            if len(theirs) != 1 or not len(detections):
                continue
            their_crop = np.array(theirs[0]["crop_xyxy"], np.float64)
            ours = np.array(
                [crop_region_xyxy(b, frame_wh, "facellava") for b in detections.xyxy], np.float64
            )
            ious = box_iou(ours, np.repeat(their_crop[None], len(ours), 0))
            best = int(np.argmax(ious))
            candidates.append((frame_index, detections.xyxy[best], their_crop, float(ious[best])))
    if args.frame is None:
        median = float(np.median([c[3] for c in candidates]))
        chosen = min(candidates, key=lambda c: abs(c[3] - median))
    else:
        chosen = next(c for c in candidates if c[0] == args.frame)
    frame_index, box, their_crop, iou = chosen
    frame = frames[frame_index]

    drawn = frame.copy()
    x1, y1, x2, y2 = (round(float(v)) for v in box)
    cv2.rectangle(drawn, (x1, y1), (x2, y2), GREEN, 1)
    for region, colour in (
        (crop_region_xyxy(box, frame_wh, "box_corner"), BLUE),
        (tuple(int(v) for v in their_crop), RED),
        (crop_region_xyxy(box, frame_wh, "facellava"), GREEN),
    ):
        cv2.rectangle(drawn, region[:2], region[2:], colour, 2)
    left = _label(
        drawn,
        f"frame {frame_index}: ours (green) vs authors' (red), IoU {iou:.2f}; old (blue)",
        WHITE,
    )
    ours_crop = cv2.cvtColor(crop_face(frame, box, mode="facellava"), cv2.COLOR_RGB2BGR)
    tx0, ty0, tx1, ty1 = (int(v) for v in their_crop)  # their region, cut as their tool does
    their_image = cv2.resize(frame[ty0:ty1, tx0:tx1], (256, 256), interpolation=cv2.INTER_LINEAR)
    crops = np.hstack(
        [_label(ours_crop, "our crop", GREEN), _label(their_image, "authors' crop", RED)]
    )
    height = max(left.shape[0], crops.shape[0])
    canvas = np.zeros((height, left.shape[1] + crops.shape[1] + 8, 3), np.uint8)
    canvas[: left.shape[0], : left.shape[1]] = left
    canvas[: crops.shape[0], left.shape[1] + 8 :] = crops
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), canvas)
    print(f"{args.out}: frame {frame_index}, crop IoU {iou:.3f}")


if __name__ == "__main__":
    main()
