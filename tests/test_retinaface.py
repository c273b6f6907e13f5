"""RetinaFace: conformance with the reference detector, batching, resizing, checkpoints."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch

from models.detections import Detections
from models.retinaface import (
    MOBILENET_CONFIG,
    POST_NMS_KEEP,
    PRE_NMS_MIN_SCORE,
    PRE_NMS_TOP_K,
    RESNET50_CONFIG,
    DetectorCheckpointError,
    DetectorOptions,
    Priors,
    RetinaFace,
    RetinaFaceDetector,
    load_retinaface,
    nms,
    select_faces,
)
from models.weights import WeightsChecksumError

pytestmark = pytest.mark.timeout(120)

MNET_SHA256 = "38ec7bb3c9cbfe2f40edabc05fab970a6d648747cbc534092be85d5eb9b37ed0"
RESNET50_FINAL_BYTES = 109_497_761  # size of the released Resnet50_Final.pth


def _decode_bgr(path: Path, limit: int | None = None) -> list[np.ndarray]:
    """Frames the way the reference decoded them: PyAV decode order, bgr24."""
    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="bgr24"))
            if limit is not None and len(frames) >= limit:
                break
    return frames


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _assert_same_faces(
    expected: Detections, actual: Detections, *, min_iou: float, landmark_px: float, score: float
) -> None:
    """Every expected face has its own match in `actual`, and there is nothing extra."""
    assert len(actual) == len(expected), f"{len(actual)} faces, expected {len(expected)}"
    free = set(range(len(actual)))
    for i in range(len(expected)):
        best = max(free, key=lambda j: _iou(expected.xyxy[i], actual.xyxy[j]))
        assert _iou(expected.xyxy[i], actual.xyxy[best]) >= min_iou, (
            expected.xyxy[i],
            actual.xyxy[best],
        )
        np.testing.assert_allclose(actual.landmarks[best], expected.landmarks[i], atol=landmark_px)
        assert abs(float(actual.scores[best]) - float(expected.scores[i])) <= score
        free.remove(best)


@pytest.fixture(scope="module")
def mnet(mnet_weights: Path) -> RetinaFace:
    return load_retinaface(mnet_weights)


@pytest.fixture(scope="module")
def hamilton_frames(hamilton_mp4: Path) -> list[np.ndarray]:
    return _decode_bgr(hamilton_mp4, limit=161)[::40]


@pytest.mark.parametrize("example", [1, 2])
def test_mnet_reproduces_reference_detections_on_facellava_clips(
    testdata: Path, example: int
) -> None:
    reference = json.loads(
        (testdata / "reference" / f"retinaface_mnet_facellava_ex{example}.json").read_text()
    )
    meta = reference["meta"]
    detector = RetinaFaceDetector.from_options(
        DetectorOptions(
            weights=str(testdata / meta["weights"]),
            weights_sha256=meta["weights_sha256"],
            score_threshold=meta["params"]["save_score_threshold"],
            nms_threshold=meta["params"]["nms_threshold"],
            max_side_px=None,
            device="cpu",
        )
    )
    frames = _decode_bgr(testdata / reference["video"]["path"])
    assert len(frames) == len(reference["frames"])
    results = detector.detect(frames)
    for expected, image, actual in zip(reference["frames"], frames, results, strict=True):
        assert hashlib.md5(image.tobytes()).hexdigest() == expected["frame_bgr24_md5"], (
            f"frame {expected['frame_index']} decodes differently from the reference"
        )
        expected_faces = Detections(
            xyxy=np.asarray(expected["boxes"], np.float32).reshape(-1, 4),
            scores=np.asarray(expected["scores"], np.float32),
            landmarks=np.asarray(expected["landmarks"], np.float32).reshape(-1, 5, 2),
        )
        _assert_same_faces(expected_faces, actual, min_iou=0.95, landmark_px=1.0, score=1e-3)
    assert sum(len(r) for r in results) == reference["summary"]["n_faces_total"]


def test_padded_batch_of_mixed_sizes_equals_per_frame_detection(
    mnet: RetinaFace, hamilton_frames: list[np.ndarray]
) -> None:
    detector = RetinaFaceDetector(mnet, score_threshold=0.3, max_side_px=None)
    f = hamilton_frames
    images = [
        f[0],
        np.ascontiguousarray(f[1][:301, :517]),
        np.ascontiguousarray(f[2][17:, :333]),
        np.ascontiguousarray(f[3][:123, :457]),
        np.ascontiguousarray(f[4][:255, 101:]),
    ]
    alone = [detector.detect([image])[0] for image in images]
    together = detector.detect(images)
    assert sum(len(d) for d in alone) >= 5, "the crops should still show faces"
    for single, batched in zip(alone, together, strict=True):
        np.testing.assert_allclose(batched.xyxy, single.xyxy, atol=1e-3)
        np.testing.assert_allclose(batched.scores, single.scores, atol=1e-5)
        np.testing.assert_allclose(batched.landmarks, single.landmarks, atol=1e-3)


def test_batches_larger_than_max_batch_are_split_with_results_in_order(
    mnet: RetinaFace, hamilton_frames: list[np.ndarray]
) -> None:
    detector = RetinaFaceDetector(mnet, max_side_px=None, max_batch=2)
    batched = detector.detect(hamilton_frames)
    assert len(batched) == len(hamilton_frames)
    for image, faces in zip(hamilton_frames, batched, strict=True):
        np.testing.assert_allclose(faces.xyxy, detector.detect([image])[0].xyxy, atol=1e-3)


@pytest.mark.parametrize(("factor", "max_side_px"), [(4, 256), (2, 640)])
def test_resized_detection_maps_back_to_original_pixels(
    mnet: RetinaFace,
    testdata: Path,
    hamilton_frames: list[np.ndarray],
    factor: int,
    max_side_px: int,
) -> None:
    native_image = (
        _decode_bgr(testdata / "videos" / "facellava_facial_expr_example_1.mp4", limit=1)[0]
        if max_side_px == 256
        else hamilton_frames[0]
    )
    height, width = native_image.shape[:2]
    large = cv2.resize(native_image, (width * factor, height * factor))
    native = RetinaFaceDetector(mnet, max_side_px=None).detect([native_image])[0]
    resized = RetinaFaceDetector(mnet, max_side_px=max_side_px).detect([large])[0]
    assert len(native) > 0
    expected = Detections(native.xyxy * factor, native.scores, native.landmarks * factor)
    _assert_same_faces(expected, resized, min_iou=0.85, landmark_px=0.1 * factor * 8, score=0.05)


def test_frames_smaller_than_max_side_are_not_resized(mnet: RetinaFace) -> None:
    detector = RetinaFaceDetector(mnet, max_side_px=640)
    image = np.zeros((100, 200, 3), np.uint8)
    resized, scale = detector._resize(image)
    assert resized is image and scale == (1.0, 1.0)


def test_sha256_mismatch_stops_the_detector_from_loading(mnet_weights: Path) -> None:
    with pytest.raises(WeightsChecksumError):
        RetinaFaceDetector.from_options(
            DetectorOptions(weights=str(mnet_weights), weights_sha256="f" * 64, device="cpu")
        )


def test_module_prefixed_checkpoint_loads_with_the_same_outputs(
    mnet_weights: Path, mnet: RetinaFace, tmp_path: Path
) -> None:
    state = torch.load(mnet_weights, map_location="cpu", weights_only=True)
    prefixed = tmp_path / "prefixed.pth"
    torch.save({f"module.{key}": value for key, value in state.items()}, prefixed)
    net = load_retinaface(prefixed)
    x = torch.randn(1, 3, 64, 96)
    with torch.inference_mode():
        for got, want in zip(net(x), mnet(x), strict=True):
            torch.testing.assert_close(got, want)


def test_backbone_classifier_keys_are_skipped_but_other_extra_keys_fail(
    mnet_weights: Path, tmp_path: Path
) -> None:
    state = torch.load(mnet_weights, map_location="cpu", weights_only=True)
    with_classifier = tmp_path / "with_fc.pth"
    torch.save(
        {**state, "body.fc.weight": torch.zeros(1000, 256), "body.fc.bias": torch.zeros(1000)},
        with_classifier,
    )
    assert load_retinaface(with_classifier).config == MOBILENET_CONFIG
    with_stray = tmp_path / "with_stray.pth"
    torch.save({**state, "stray.weight": torch.zeros(1)}, with_stray)
    with pytest.raises(DetectorCheckpointError, match="stray"):
        load_retinaface(with_stray)


def test_file_without_retinaface_keys_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(2)}, path)
    with pytest.raises(DetectorCheckpointError, match="not a RetinaFace checkpoint"):
        load_retinaface(path)


def test_resnet50_follows_the_released_checkpoint_layout(tmp_path: Path) -> None:
    net = RetinaFace(RESNET50_CONFIG)
    state = net.state_dict()
    expected_shapes = {
        "body.conv1.weight": (64, 3, 7, 7),
        "body.bn1.running_var": (64,),
        "body.layer1.0.conv1.weight": (64, 64, 1, 1),
        "body.layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "body.layer2.0.conv2.weight": (128, 128, 3, 3),
        "body.layer3.5.conv3.weight": (1024, 256, 1, 1),
        "body.layer4.2.bn3.weight": (2048,),
        "fpn.output1.0.weight": (256, 512, 1, 1),
        "fpn.output2.0.weight": (256, 1024, 1, 1),
        "fpn.output3.0.weight": (256, 2048, 1, 1),
        "fpn.merge2.0.weight": (256, 256, 3, 3),
        "ssh3.conv3X3.0.weight": (128, 256, 3, 3),
        "ssh3.conv7x7_3.0.weight": (64, 64, 3, 3),
        "ClassHead.2.conv1x1.weight": (4, 256, 1, 1),
        "BboxHead.0.conv1x1.weight": (8, 256, 1, 1),
        "LandmarkHead.1.conv1x1.bias": (20,),
    }
    for key, shape in expected_shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(key.startswith(("body.fc", "body.avgpool", "body.layer5")) for key in state)
    assert sum(1 for key in state if key.startswith("body.layer")) == 16 * 3 * 5 + 4 * 6 + 16 * 3
    tensor_bytes = sum(v.numel() * v.element_size() for v in state.values())
    # The released file is these tensors plus ~200 bytes of pickle per tensor.
    assert RESNET50_FINAL_BYTES - 150_000 < tensor_bytes < RESNET50_FINAL_BYTES

    # The loader recognises the backbone from the keys; a forward gives one row per prior.
    path = tmp_path / "Resnet50_Final.pth"
    torch.save({f"module.{key}": value for key, value in state.items()}, path)
    loaded = load_retinaface(path)
    assert loaded.config == RESNET50_CONFIG
    detector = RetinaFaceDetector(loaded, max_side_px=None)
    image = np.random.default_rng(0).integers(0, 255, (70, 90, 3), np.uint8)
    with torch.inference_mode():
        boxes, logits, marks = loaded(torch.zeros(1, 3, 70, 90))
    assert boxes.shape == (1, len(Priors.for_size(70, 90).size_px), 4)
    assert logits.shape[-1] == 2 and marks.shape[-1] == 10
    assert isinstance(detector.detect([image])[0], Detections)


def test_folded_batchnorm_gives_the_same_outputs_as_the_checkpoint_network(
    mnet_weights: Path, mnet: RetinaFace
) -> None:
    state = torch.load(mnet_weights, map_location="cpu", weights_only=True)
    plain = RetinaFace(MOBILENET_CONFIG)
    plain.load_state_dict(state, strict=True)
    plain.eval()
    x = torch.randn(2, 3, 120, 72) * 50
    with torch.inference_mode():
        for got, want in zip(mnet(x), plain(x), strict=True):
            torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-3)


def test_priors_follow_the_reference_layout() -> None:
    priors = Priors.for_size(360, 640)
    assert len(priors.size_px) == 2 * (45 * 80 + 23 * 40 + 12 * 20)
    np.testing.assert_array_equal(priors.center_xy[:3], [[4, 4], [4, 4], [12, 4]])
    np.testing.assert_array_equal(priors.size_px[:4, 0], [16, 32, 16, 32])
    assert priors.inside(100, 50).sum() == 2 * (13 * 7 + 7 * 4 + 4 * 2)


def _reference_selection(
    boxes: np.ndarray, scores: np.ndarray, score_threshold: float, nms_threshold: float
) -> np.ndarray:
    """The reference order of operations, literally: 0.02, top-k, NMS, keep, threshold."""
    index = np.flatnonzero(scores > PRE_NMS_MIN_SCORE)
    index = index[np.argsort(scores[index])[::-1][:PRE_NMS_TOP_K]]
    index = index[nms(boxes[index], scores[index], nms_threshold)][:POST_NMS_KEEP]
    return index[scores[index] >= score_threshold]


@pytest.mark.parametrize("seed", range(5))
def test_early_score_filter_keeps_exactly_the_reference_faces(seed: int) -> None:
    rng = np.random.default_rng(seed)
    corners = rng.uniform(0, 300, (2000, 2)).astype(np.float32)
    sizes = rng.uniform(5, 80, (2000, 2)).astype(np.float32)
    boxes = np.concatenate((corners, corners + sizes), 1)
    scores = rng.uniform(0, 1, 2000).astype(np.float32)
    chosen = select_faces(boxes, scores, score_threshold=0.5, nms_threshold=0.4)
    np.testing.assert_array_equal(chosen, _reference_selection(boxes, scores, 0.5, 0.4))


def test_nms_suppresses_overlaps_above_the_threshold_only() -> None:
    boxes = np.asarray([[0, 0, 9, 9], [1, 0, 10, 9], [0, 0, 9, 4], [20, 20, 29, 29]], np.float32)
    scores = np.asarray([0.9, 0.8, 0.7, 0.6], np.float32)
    # +1 areas: box 1 overlaps box 0 by 90/110 > 0.4, box 2 by 50/100 > 0.4.
    np.testing.assert_array_equal(nms(boxes, scores, 0.4), [0, 3])
    np.testing.assert_array_equal(nms(boxes, scores, 0.85), [0, 1, 2, 3])


def test_time_detection_reports_per_frame_and_per_batch_times(
    mnet: RetinaFace, hamilton_frames: list[np.ndarray]
) -> None:
    timing = RetinaFaceDetector(mnet, max_side_px=None).time_detection(
        hamilton_frames[:4], batch_size=2, repeats=1
    )
    assert timing.frames == 4 and timing.batch_size == 2
    assert timing.ms_per_batch == pytest.approx(2 * timing.ms_per_frame)
    assert 0 < timing.ms_per_frame < 5000
