"""Face crops: the authors' square geometry, black padding off-frame, centred mode, quality."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from ingest.crops import crop_face, crop_quality, crop_square_xyxy, frontalness, sharpness

pytestmark = pytest.mark.timeout(30)


def grid_frame(height: int = 360, width: int = 640) -> np.ndarray:
    """A BGR frame whose pixel (y, x) encodes its own coordinates: B = x % 256, G = y."""
    ys, xs = np.mgrid[0:height, 0:width]
    frame = np.zeros((height, width, 3), np.uint8)
    frame[..., 0] = xs % 256
    frame[..., 1] = ys % 256
    frame[..., 2] = 200
    return frame


def test_facellava_square_is_anchored_at_the_box_top_left_with_mean_side() -> None:
    left, top, side = crop_square_xyxy((100, 50, 160, 130))  # w 60, h 80
    assert (left, top, side) == (100, 50, 70)


def test_facellava_crop_content_is_that_square_resized_to_rgb() -> None:
    frame = grid_frame()
    box = (100, 50, 160, 130)  # square 100..170 × 50..120
    crop = crop_face(frame, box, size_px=70)  # same size: no resampling
    assert crop.shape == (70, 70, 3) and crop.dtype == np.uint8
    np.testing.assert_array_equal(crop[..., 2], frame[50:120, 100:170, 0])  # RGB: B last
    np.testing.assert_array_equal(crop[..., 1], frame[50:120, 100:170, 1])
    assert (crop[..., 0] == 200).all()
    big = crop_face(frame, box, size_px=256)
    expected = cv2.cvtColor(
        cv2.resize(frame[50:120, 100:170], (256, 256), interpolation=cv2.INTER_LINEAR),
        cv2.COLOR_BGR2RGB,
    )
    np.testing.assert_array_equal(big, expected)


def test_crop_leaving_the_frame_is_padded_black() -> None:
    frame = grid_frame()
    box = (600, 330, 660, 390)  # square 600..660 × 330..390 on a 640×360 frame
    crop = crop_face(frame, box, size_px=60)
    assert crop.shape == (60, 60, 3)
    assert (crop[30:, :, :] == 0).all()  # below the frame
    assert (crop[:, 40:, :] == 0).all()  # right of the frame
    np.testing.assert_array_equal(crop[:30, :40, 2], frame[330:360, 600:640, 0])
    assert (crop[:30, :40, 0] == 200).all()
    off = crop_face(frame, (700, 400, 760, 460), size_px=32)
    assert off.shape == (32, 32, 3) and not off.any()


def test_centered_mode_adds_margin_around_the_box_centre() -> None:
    left, top, side = crop_square_xyxy((100, 50, 160, 130), mode="centered", margin=0.25)
    assert side == pytest.approx(80 * 1.5)
    assert (left + side / 2, top + side / 2) == pytest.approx((130, 90))
    frame = grid_frame()
    crop = crop_face(frame, (100, 50, 160, 130), size_px=120, mode="centered", margin=0.25)
    np.testing.assert_array_equal(crop[..., 1], frame[30:150, 70:190, 1])
    with pytest.raises(ValueError, match="crop mode"):
        crop_square_xyxy((0, 0, 1, 1), mode="sideways")  # type: ignore[arg-type]


def test_frontalness_is_high_for_frontal_and_low_for_profile_landmarks() -> None:
    frontal = np.array([[30, 40], [70, 40], [50, 60], [35, 80], [65, 80]], np.float32)
    turned = np.array([[30, 40], [70, 40], [68, 60], [35, 80], [65, 80]], np.float32)
    assert frontalness(frontal) == pytest.approx(1.0)
    assert frontalness(turned) < 0.2
    rolled = frontal @ np.array([[0.8, 0.6], [-0.6, 0.8]], np.float32)  # head tilt only
    assert frontalness(rolled) == pytest.approx(1.0, abs=1e-5)


def test_quality_prefers_sharp_large_frontal_faces() -> None:
    rng = np.random.default_rng(0)
    sharp = rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)
    blurred = cv2.GaussianBlur(sharp, (0, 0), 6)
    assert sharpness(sharp) > 0.9 > 0.5 > sharpness(blurred)
    lm = np.array([[30, 40], [70, 40], [50, 60], [35, 80], [65, 80]], np.float32)
    good = crop_quality(sharp, np.array([0, 0, 120, 120]), 0.99, lm)
    small_blurry = crop_quality(blurred, np.array([0, 0, 30, 30]), 0.99, lm)
    assert 0.0 <= small_blurry.score < good.score <= 1.0
    assert good.size == 1.0 and small_blurry.size == pytest.approx(30 / 112)
