"""Our BlazeFace short-range: anchors, decoding, suppression, letterbox, pairing with
RetinaFace, and the real network against the authors' detector output on the test clips."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
from safetensors import safe_open

from ingest.authors_boxes import match_blazeface
from ingest.crop_geometry import mediapipe_pixel_box
from models.blazeface import (
    WEIGHTS_PATH,
    BlazeFaceDetector,
    BlazeFaces,
    BlazeFaceWeightsError,
    anchor_centres,
    decode,
    load_blazeface,
    to_input,
    weighted_nms,
)
from models.detections import Detections
from models.weights import WeightsError

CLIPS = (
    "short_hamilton_clip",
    "facellava_facial_expr_example_1",
    "facellava_facial_expr_example_2",
)
SOURCE_SHA256 = "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8"


def test_anchors_are_896_cell_centres_two_per_fine_cell_and_six_per_coarse_cell() -> None:
    anchors = anchor_centres()
    assert anchors.shape == (896, 2)
    np.testing.assert_allclose(anchors[0], [1 / 32, 1 / 32])
    np.testing.assert_allclose(anchors[1], [1 / 32, 1 / 32])
    np.testing.assert_allclose(anchors[2], [3 / 32, 1 / 32])  # next column, same row
    np.testing.assert_allclose(anchors[32], [1 / 32, 3 / 32])  # next row
    np.testing.assert_allclose(anchors[512:518], np.tile([1 / 16, 1 / 16], (6, 1)))
    np.testing.assert_allclose(anchors[-1], [15 / 16, 15 / 16])


def test_decoding_scales_regressors_by_128_around_the_anchor_and_keeps_scores_from_half() -> None:
    anchors = anchor_centres()
    logits = np.full(896, -5.0, np.float32)
    logits[[3, 700]] = [0.0, -0.01]  # sigmoid 0.5 is kept, just below is not
    regressors = np.zeros((896, 16), np.float32)
    regressors[3, :4] = [12.8, -6.4, 25.6, 51.2]
    regressors[3, 4:6] = [-12.8, 0.0]  # first keypoint 0.1 left of the anchor
    scores, boxes, keypoints = decode(logits, regressors, anchors)
    assert scores.tolist() == [0.5]
    cx, cy = anchors[3] + [0.1, -0.05]
    np.testing.assert_allclose(boxes[0], [cx - 0.1, cy - 0.2, cx + 0.1, cy + 0.2], atol=1e-6)
    np.testing.assert_allclose(keypoints[0, 0], anchors[3] + [-0.1, 0.0], atol=1e-6)
    np.testing.assert_allclose(keypoints[0, 1], anchors[3], atol=1e-6)


def test_weighted_suppression_averages_overlapping_boxes_by_score_and_keeps_the_top_score() -> None:
    scores = np.array([0.6, 0.9, 0.8], np.float32)
    boxes = np.array([[0.1, 0.1, 0.3, 0.3], [0.12, 0.1, 0.32, 0.3], [0.6, 0.6, 0.8, 0.8]])
    keypoints = np.zeros((3, 6, 2), np.float32)
    keypoints[:, 0] = [[0.2, 0.2], [0.25, 0.2], [0.7, 0.7]]
    out_scores, out_boxes, out_points = weighted_nms(scores, boxes.astype(np.float32), keypoints)
    np.testing.assert_allclose(out_scores, [0.9, 0.8])
    merged = (0.9 * boxes[1] + 0.6 * boxes[0]) / 1.5
    np.testing.assert_allclose(out_boxes[0], merged, atol=1e-6)
    np.testing.assert_allclose(out_points[0, 0], [(0.9 * 0.25 + 0.6 * 0.2) / 1.5, 0.2], atol=1e-6)
    np.testing.assert_allclose(out_boxes[1], boxes[2], atol=1e-6)
    # IoU exactly at the threshold does not merge (MediaPipe merges above it only).
    two = np.array([[0.0, 0.0, 0.2, 0.1], [0.0, 0.0, 0.2, 0.03]], np.float32)  # IoU 0.3
    assert len(weighted_nms(np.array([0.9, 0.8], np.float32), two, keypoints[:2])[0]) == 2


def test_frame_is_letterboxed_to_its_long_side_and_scaled_to_minus_one_one() -> None:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (360, 640, 3), dtype=np.uint8)
    tensor = to_input(frame)
    assert tensor.shape == (128, 128, 3)
    # 640 px → 128: 5 px per input pixel; (640 − 360) / 2 = 140 px of zero border on top.
    np.testing.assert_allclose(tensor[:28], -1.0)
    np.testing.assert_allclose(tensor[-28:], -1.0)
    expected = frame[5 * 40 - 140, 5 * 17].astype(np.float32) * 2 / 255 - 1
    np.testing.assert_allclose(tensor[40, 17], expected, atol=1e-6)


def test_pairing_uses_box_overlap_first_then_keypoints_inside_our_box() -> None:
    ours = Detections(
        xyxy=np.array([[100, 100, 160, 180], [300, 100, 340, 150]], np.float32),
        scores=np.ones(2, np.float32),
        landmarks=np.zeros((2, 5, 2), np.float32),
    )
    keypoints = np.zeros((3, 6, 2), np.float32)
    keypoints[0, :3] = [[120, 130], [140, 130], [130, 150]]
    keypoints[1, :3] = [[310, 120], [330, 120], [320, 135]]  # inside our second box
    keypoints[2, :3] = [[600, 10], [610, 10], [605, 20]]
    blaze = BlazeFaces(
        xyxy=np.array(
            [[98, 115, 163, 180], [260, 60, 420, 220], [590, 0, 630, 40]], np.float32
        ),  # the second overlaps our second box by IoU 0.08 only
        scores=np.ones(3, np.float32),
        keypoints=keypoints,
    )
    paired = match_blazeface(ours, blaze)
    np.testing.assert_array_equal(paired, blaze.xyxy[:2])
    none = match_blazeface(ours, BlazeFaces(blaze.xyxy[2:], blaze.scores[2:], keypoints[2:]))
    assert np.isnan(none).all()


def test_weights_are_the_mediapipe_conversion_and_a_wrong_file_is_a_weights_error(
    tmp_path: Path,
) -> None:
    with safe_open(str(WEIGHTS_PATH), "np") as stored:
        assert stored.metadata()["source_sha256"] == SOURCE_SHA256
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_bytes(b"not safetensors")
    with pytest.raises(BlazeFaceWeightsError) as caught:
        load_blazeface(bogus)
    assert isinstance(caught.value, WeightsError)


def test_bad_frames_are_refused_with_a_clear_error() -> None:
    detector = BlazeFaceDetector.load()
    with pytest.raises(ValueError, match="uint8"):
        detector.detect([np.zeros((10, 10), np.uint8)])
    assert detector.detect([]) == []


@pytest.mark.timeout(300)
def test_our_blazeface_reproduces_the_authors_detector_on_the_three_clips(
    testdata: Path,
) -> None:
    detector = BlazeFaceDetector.load()
    total = close = extra = 0
    for clip in CLIPS:
        reference = json.loads((testdata / "reference" / f"blazeface_{clip}.json").read_text())
        with av.open(str(testdata / "videos" / f"{clip}.mp4")) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert len(frames) == len(reference["frames"])
        frame_wh = (frames[0].shape[1], frames[0].shape[0])
        for start in range(0, len(frames), 16):
            found = detector.detect(frames[start : start + 16], bgr=False)
            for offset, faces in enumerate(found):
                theirs = reference["frames"][start + offset]["faces"]
                ours = [mediapipe_pixel_box(tuple(box), frame_wh) for box in faces.xyxy]
                extra += max(len(ours) - len(theirs), 0)
                for face in theirs:
                    x, y, w, h = face["origin_xywh"]
                    total += 1
                    best = max((_iou((x, y, x + w, y + h), box) for box in ours), default=0.0)
                    close += best >= 0.95
    assert total == 406
    assert close / total >= 0.98, (close, total)
    assert extra / total <= 0.02, (extra, total)


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def test_crop_detector_runs_blazeface_only_on_frames_with_a_face() -> None:
    from ingest.authors_boxes import BlazeFaceCropDetector

    face = Detections(
        np.array([[10, 10, 50, 60]], np.float32),
        np.array([0.9], np.float32),
        np.zeros((1, 5, 2), np.float32),
    )
    none = Detections(
        np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32)
    )
    frames = [np.full((80, 80, 3), n, np.uint8) for n in range(3)]

    class Ours:
        def detect(self, images):
            return [face if image[0, 0, 0] == 1 else none for image in images]

    class Theirs:
        def __init__(self) -> None:
            self.seen: list[int] = []

        def detect(self, images, bgr):
            self.seen += [int(image[0, 0, 0]) for image in images]
            box = np.array([[12, 8, 52, 58]], np.float32)
            return [BlazeFaces(box, np.array([0.8], np.float32), np.zeros((1, 6, 2), np.float32))]

    theirs = Theirs()
    result = BlazeFaceCropDetector(Ours(), theirs).detect(frames)  # type: ignore[arg-type]
    assert theirs.seen == [1]  # frames 0 and 2 have no face to pair
    assert [r.crop_boxes.shape for r in result] == [(0, 4), (1, 4), (0, 4)]
    assert result[1].crop_boxes[0].tolist() == [12, 8, 52, 58]
    assert BlazeFaceCropDetector(Ours(), theirs).detect([frames[0]])[0].crop_boxes.shape == (0, 4)
