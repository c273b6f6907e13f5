"""Check the crop geometries against the Face-LLaVA authors' crop regions; fit `facellava`.

    python -m scripts.crop_geometry_fit [--testdata DIR] [--transforms]

Runs our RetinaFace (the test weights, CPU) with our BlazeFace beside it (the default
`blazeface` crop mode, `ingest/authors_boxes.py`) on every frame of the three test clips,
matches each face of the authors' detector (`reference/blazeface_*.json`) to ours (box
IoU ≥ 0.3, greedy), and prints, per clip: the crop-region IoU of the committed
geometry, of the previous `box_corner` geometry, the unmatched share, a grid-search fit of
the two parameters on all clips, and a leave-one-clip-out fit (fit on two clips, score
the third). `--transforms` also scores the `facellava` estimate on mirrored and
rescaled frames against the correspondingly transformed authors' regions. The test
`tests/test_crop_geometry.py` uses the same functions.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

from ingest.authors_boxes import MATCH_MIN_BOX_IOU, with_crop_boxes
from ingest.crop_geometry import (
    BLAZEFACE_CENTRE_DY,
    BLAZEFACE_SIDE_SCALE,
    CropMode,
    crop_region_xyxy,
)
from ingest.pipeline import FaceDetector
from models.detections import Detections
from models.retinaface import DetectorOptions, RetinaFaceDetector

CLIPS = (
    "short_hamilton_clip",
    "facellava_facial_expr_example_1",
    "facellava_facial_expr_example_2",
)


@dataclass(frozen=True)
class MatchedFaces:
    """One clip's faces of the authors' detector, matched to ours.

    `ours_xyxy` (N, 4) our boxes, `theirs_crop_xyxy` (N, 4) their crop regions, for the
    N matched faces; `frame_wh` the frame size; `unmatched` how many of theirs found no
    face of ours. `keypoint_gap` (N,): how far their eye midpoint and mouth keypoint lie
    from ours (the larger, over our eye–mouth distance); `faces_in_frame` (N,): how many
    faces their detector found in that frame (their tool keeps frames with exactly one);
    `keypoints_outside` (N,): some of their eye, nose and mouth keypoints lie outside
    our box for the face. `ours_crop_boxes` (N, 4): the BlazeFace box our pipeline paired
    with our face (`Detections.crop_boxes`; NaN rows: none), None when it did not run.
    """

    name: str
    frame_wh: tuple[int, int]
    ours_xyxy: np.ndarray
    theirs_crop_xyxy: np.ndarray
    unmatched: int
    keypoint_gap: np.ndarray
    faces_in_frame: np.ndarray
    keypoints_outside: np.ndarray
    ours_crop_boxes: np.ndarray | None = None

    @property
    def total(self) -> int:
        """Their faces, matched or not."""
        return len(self.ours_xyxy) + self.unmatched


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise IoU of two (N, 4) xyxy arrays."""
    w = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    h = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = w * h
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a + area_b - inter, 1e-9)


def decode_bgr(video: Path) -> Iterator[np.ndarray]:
    """Every decoded frame in decode order, as the reference was made (PyAV)."""
    with av.open(str(video)) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="bgr24")


def detect_video(
    detector: FaceDetector,
    video: Path,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    batch: int = 8,
) -> tuple[list[Detections], tuple[int, int]]:
    """Our faces on every frame (after `transform`), and the (transformed) frame size."""
    out: list[Detections] = []
    pending: list[np.ndarray] = []
    frame_wh = (0, 0)
    for image in decode_bgr(video):
        image = transform(image) if transform else image
        frame_wh = (image.shape[1], image.shape[0])
        pending.append(image)
        if len(pending) == batch:
            out.extend(detector.detect(pending))
            pending = []
    if pending:
        out.extend(detector.detect(pending))
    return out, frame_wh


def their_faces(
    reference: Path, mirror: bool = False, scale: float = 1.0
) -> list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """Per frame, (box xyxy, crop xyxy, keypoints (6, 2)) of each face of the authors' detector.

    With `mirror`/`scale`, their box is transformed and their crop recomputed from it by
    their own rule, as their tool would on the transformed frame (their detector assumed
    to commute with mirroring and scaling).
    """
    data = json.loads(reference.read_text())
    width, height = data["meta"]["frame_size_wh"]
    frame_wh = (round(width * scale), round(height * scale))
    frames = []
    for frame in data["frames"]:
        faces = []
        for face in frame["faces"]:
            x, y, w, h = (float(v) for v in face["origin_xywh"])
            box = np.array([x, y, x + w, y + h])
            crop = np.array(face["crop_xyxy"], np.float64)
            keypoints = np.array(face["keypoints"], np.float64)
            if mirror or scale != 1.0:
                if mirror:
                    box = np.array([width - box[2], box[1], width - box[0], box[3]])
                    keypoints[:, 0] = width - keypoints[:, 0]
                box, keypoints = box * scale, keypoints * scale
                crop = np.array(_authors_cut(box, frame_wh), np.float64)
            faces.append((box, crop, keypoints))
        frames.append(faces)
    return frames


def _authors_cut(box: np.ndarray, frame_wh: tuple[int, int]) -> tuple[int, int, int, int]:
    from ingest.crop_geometry import authors_cut_xyxy, mediapipe_pixel_box

    x1, y1, x2, y2 = (float(v) for v in box)
    return authors_cut_xyxy(mediapipe_pixel_box((x1, y1, x2, y2), frame_wh), frame_wh)


def match_faces(
    name: str,
    theirs: list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]],
    ours: list[Detections],
    frame_wh: tuple[int, int],
) -> MatchedFaces:
    """Pair each of their faces with one of ours per frame (box IoU, greedy, ≥ 0.3)."""
    if len(theirs) != len(ours):
        raise ValueError(f"{name}: {len(theirs)} reference frames but {len(ours)} decoded")
    ours_rows, crops, gaps, counts, outside, unmatched = [], [], [], [], [], 0
    crop_boxes: list[np.ndarray] = []
    for their_frame, detections in zip(theirs, ours, strict=True):
        pairs = []
        for i, (box, _, _) in enumerate(their_frame):
            if len(detections):
                ious = box_iou(np.repeat(box[None], len(detections), 0), detections.xyxy)
                pairs += [(float(v), i, j) for j, v in enumerate(ious) if v >= MATCH_MIN_BOX_IOU]
        used_theirs: set[int] = set()
        used_ours: set[int] = set()
        for _, i, j in sorted(pairs, reverse=True):
            if i in used_theirs or j in used_ours:
                continue
            used_theirs.add(i)
            used_ours.add(j)
            ours_rows.append(detections.xyxy[j].astype(np.float64))
            if detections.crop_boxes is not None:
                crop_boxes.append(detections.crop_boxes[j].astype(np.float64))
            crops.append(their_frame[i][1])
            gaps.append(_keypoint_gap(detections.landmarks[j], their_frame[i][2]))
            counts.append(len(their_frame))
            x1, y1, x2, y2 = detections.xyxy[j]
            points = their_frame[i][2][:4]
            outside.append(
                bool(
                    np.any(
                        (points[:, 0] < x1)
                        | (points[:, 0] > x2)
                        | (points[:, 1] < y1)
                        | (points[:, 1] > y2)
                    )
                )
            )
        unmatched += len(their_frame) - len(used_theirs)
    return MatchedFaces(
        name=name,
        frame_wh=frame_wh,
        ours_xyxy=np.array(ours_rows).reshape(-1, 4),
        theirs_crop_xyxy=np.array(crops).reshape(-1, 4),
        unmatched=unmatched,
        keypoint_gap=np.array(gaps),
        faces_in_frame=np.array(counts),
        keypoints_outside=np.array(outside, bool),
        ours_crop_boxes=np.array(crop_boxes).reshape(-1, 4) if ours and any(
            d.crop_boxes is not None for d in ours
        ) else None,
    )


def _keypoint_gap(ours: np.ndarray, theirs: np.ndarray) -> float:
    """Their eye midpoint and mouth vs ours (the larger), over our eye–mouth distance.

    Both lists start with the two eyes; ours has the mouth corners at 3 and 4, theirs
    the mouth centre at 3.
    """
    our_eyes, our_mouth = ours[:2].mean(0), ours[3:5].mean(0)
    scale = max(float(np.linalg.norm(our_mouth - our_eyes)), 1e-6)
    eyes_gap = np.linalg.norm(theirs[:2].mean(0) - our_eyes)
    mouth_gap = np.linalg.norm(theirs[3] - our_mouth)
    return float(max(eyes_gap, mouth_gap) / scale)


def crop_ious(faces: MatchedFaces, mode: CropMode = "blazeface") -> np.ndarray:
    """IoU of our crop region (the shipped code) with theirs, per matched face."""
    crop_boxes = faces.ours_crop_boxes
    if crop_boxes is None:
        crop_boxes = np.full((len(faces.ours_xyxy), 4), np.nan)
    ours = np.array(
        [
            crop_region_xyxy(box, faces.frame_wh, mode, crop_box)
            for box, crop_box in zip(faces.ours_xyxy, crop_boxes, strict=True)
        ],
        np.float64,
    ).reshape(-1, 4)
    return box_iou(ours, faces.theirs_crop_xyxy)


def crop_ious_for(faces: MatchedFaces, centre_dy: float, side_scale: float) -> np.ndarray:
    """`crop_ious` of the facellava geometry with other parameters (vectorised, for fitting)."""
    box = faces.ours_xyxy
    width, height = faces.frame_wh
    mean_side = (np.maximum(box[:, 2] - box[:, 0], 1) + np.maximum(box[:, 3] - box[:, 1], 1)) / 2
    cx = (box[:, 0] + box[:, 2]) / 2
    cy = (box[:, 1] + box[:, 3]) / 2 + centre_dy * mean_side
    half = side_scale * mean_side / 2
    # MediaPipe's pixel box (see `mediapipe_pixel_box`), then the authors' cut.
    x1, y1 = np.clip(np.trunc(cx - half), 0, width), np.clip(np.trunc(cy - half), 0, height)
    w, h = np.clip(np.trunc(2 * half), 0, width), np.clip(np.trunc(2 * half), 0, height)
    side = (w + h) / 2
    ours = np.stack(
        [
            x1,
            y1,
            np.trunc(np.minimum(x1 + side, width - 1)),
            np.trunc(np.minimum(y1 + side, height - 1)),
        ],
        1,
    )
    return box_iou(ours, faces.theirs_crop_xyxy)


def fit(clips: list[MatchedFaces]) -> tuple[float, float]:
    """(centre_dy, side_scale) maximising the mean over clips of the clip's mean IoU."""
    best = (-1.0, 0.0, 0.0)
    for centre_dy in np.arange(-0.10, 0.30001, 0.01):
        for side_scale in np.arange(0.80, 1.30001, 0.01):
            score = float(np.mean([crop_ious_for(c, centre_dy, side_scale).mean() for c in clips]))
            if score > best[0]:
                best = (score, round(float(centre_dy), 2), round(float(side_scale), 2))
    return best[1], best[2]


def summary(ious: np.ndarray, faces: MatchedFaces) -> str:
    """'mean … p10 … unmatched …' for one clip's IoUs."""
    return (
        f"mean {ious.mean():.3f}  p10 {np.percentile(ious, 10):.3f}  min {ious.min():.3f}  "
        f"unmatched {faces.unmatched}/{faces.total} ({100 * faces.unmatched / faces.total:.1f} %)"
    )


def load_clips(
    detector: FaceDetector,
    testdata: Path,
    mirror: bool = False,
    scale: float = 1.0,
) -> list[MatchedFaces]:
    """Detect and match all three test clips, optionally mirrored or rescaled."""

    def transform(image: np.ndarray) -> np.ndarray:
        if mirror:
            image = image[:, ::-1].copy()
        if scale != 1.0:
            size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
            image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        return image

    clips = []
    for name in CLIPS:
        ours, frame_wh = detect_video(
            detector,
            testdata / "videos" / f"{name}.mp4",
            transform if mirror or scale != 1 else None,
        )
        theirs = their_faces(testdata / "reference" / f"blazeface_{name}.json", mirror, scale)
        clips.append(match_faces(name, theirs, ours, frame_wh))
    return clips


def main() -> None:
    """Print the figures (see the module doc)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--testdata", type=Path, default=Path("../shared/testdata"))
    parser.add_argument("--transforms", action="store_true", help="Also mirrored/rescaled.")
    args = parser.parse_args()
    detector = RetinaFaceDetector.from_options(
        DetectorOptions(
            weights=str(args.testdata / "weights" / "retinaface_mobilenet0.25_Final.pth"),
            device="cpu",
        )
    )
    clips = load_clips(with_crop_boxes(detector, "blazeface"), args.testdata)
    print(f"committed geometry: centre_dy {BLAZEFACE_CENTRE_DY}, side_scale {BLAZEFACE_SIDE_SCALE}")
    unmatched = sum(c.unmatched for c in clips)
    total = sum(c.total for c in clips)
    for clip in clips:
        print(f"  {clip.name:34s} blazeface   {summary(crop_ious(clip), clip)}")
        print(f"  {'':34s} facellava   {summary(crop_ious(clip, 'facellava'), clip)}")
        print(f"  {'':34s} box_corner  {summary(crop_ious(clip, 'box_corner'), clip)}")
        if clip.ours_crop_boxes is not None:
            fallback = ~np.isfinite(clip.ours_crop_boxes).all(1)
            print(f"  {'':34s} faces without a BlazeFace box (facellava used): {fallback.sum()}")
    for mode in ("blazeface", "facellava"):
        every = np.concatenate([crop_ious(c, mode) for c in clips])
        print(
            f"  all faces, {mode}: mean {every.mean():.3f}  p10 {np.percentile(every, 10):.3f}  "
            f"unmatched {unmatched}/{total} ({100 * unmatched / total:.1f} %)"
        )
    print("where the two detectors disagree (Hamilton clip, facellava geometry):")
    hamilton = clips[0]
    ious = crop_ious(hamilton, "facellava")
    apart = hamilton.keypoint_gap > 0.3
    print(
        f"  their keypoints > 0.3 eye-mouth distances from ours on {100 * apart.mean():.0f} % "
        f"of matched faces; IoU there {ious[apart].mean():.3f}, elsewhere {ious[~apart].mean():.3f}"
    )
    out = hamilton.keypoints_outside
    print(
        f"  their eye/nose/mouth keypoints outside our box for the face on "
        f"{100 * out.mean():.0f} % "
        f"({out.sum()}) of matched faces, IoU there {ious[out].mean():.3f}; "
        f"{100 * (hamilton.faces_in_frame[out] > 1).mean():.0f} % of those in frames where "
        f"they found 2-3 faces"
    )
    agree = ~apart & ~out
    print(f"  both agree (neither of the above): {agree.sum()} faces, IoU {ious[agree].mean():.3f}")
    for count in (1, 2, 3):
        kept = hamilton.faces_in_frame == count
        if kept.any():
            print(
                f"  frames with {count} face(s) of theirs: {kept.sum()} faces, "
                f"mean IoU {ious[kept].mean():.3f}"
            )
    centre_dy, side_scale = fit(clips)
    print(f"fit on all three clips: centre_dy {centre_dy}, side_scale {side_scale}")
    for clip in clips:
        print(f"  {clip.name:34s} {summary(crop_ious_for(clip, centre_dy, side_scale), clip)}")
    print("leave one clip out (fit on the other two, score this one):")
    for held in clips:
        dy, k = fit([c for c in clips if c is not held])
        print(f"  {held.name:34s} fit ({dy}, {k})  {summary(crop_ious_for(held, dy, k), held)}")
    if args.transforms:
        for label, mirror, scale in (
            ("mirrored", True, 1.0),
            ("×0.75", False, 0.75),
            ("×1.5", False, 1.5),
        ):
            print(f"{label} frames, facellava geometry vs their transformed regions:")
            for clip in load_clips(detector, args.testdata, mirror, scale):
                print(f"  {clip.name:34s} {summary(crop_ious(clip, 'facellava'), clip)}")


if __name__ == "__main__":
    main()
