"""Face crops: the authors' square geometry, black padding off-frame, centred mode, quality."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from ingest.crops import (
    crop_face,
    crop_in_frame_xyxy,
    crop_quality,
    crop_square_xyxy,
    frontalness,
    sharpness,
)

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


@pytest.mark.parametrize("size_px", [32, 60, 256])  # down-scaled, same size, up-scaled
def test_in_frame_region_of_a_padded_crop_holds_no_black_nor_blend(size_px) -> None:
    frame = grid_frame()  # channel R is 200 everywhere in the frame
    box = (600, 330, 660, 390)  # the square leaves the frame right and below
    crop = crop_face(frame, box, size_px=size_px)
    x0, y0, x1, y1 = crop_in_frame_xyxy(frame.shape, box, size_px=size_px)
    assert 0 == x0 < x1 < size_px and 0 == y0 < y1 < size_px
    assert (crop[y0:y1, x0:x1, 0] == 200).all()
    inside = (100, 50, 160, 130)
    assert crop_in_frame_xyxy(frame.shape, inside, size_px=size_px) == (0, 0, size_px, size_px)
    x0, y0, x1, y1 = crop_in_frame_xyxy(frame.shape, (700, 400, 760, 460), size_px=size_px)
    assert x0 >= x1 and y0 >= y1  # off the frame: empty


def test_face_cut_by_the_frame_edge_does_not_score_sharper_than_whole() -> None:
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (100, 100), dtype=np.uint8).astype(np.float32)
    face = cv2.GaussianBlur(noise, (0, 0), 3)  # a soft face: little fine detail
    face = np.repeat(
        ((face - face.mean()) * 8 + 128).clip(0, 255).astype(np.uint8)[..., None], 3, 2
    )
    whole_frame = np.zeros((360, 640, 3), np.uint8)
    whole_frame[100:200, 200:300] = face
    cut_frame = np.zeros((360, 640, 3), np.uint8)
    cut_frame[100:200, 580:640] = face[:, :60]  # the right 40 % is off the frame
    lm = np.array([[30, 40], [70, 40], [50, 60], [35, 80], [65, 80]], np.float32)
    whole_box, cut_box = np.array([200, 100, 300, 200]), np.array([580, 100, 680, 200])
    whole = crop_face(whole_frame, whole_box, size_px=200)
    cut = crop_face(cut_frame, cut_box, size_px=200)
    whole_q = crop_quality(
        whole, whole_box, 0.9, lm, crop_in_frame_xyxy(whole_frame.shape, whole_box, 200)
    )
    cut_q = crop_quality(cut, cut_box, 0.9, lm, crop_in_frame_xyxy(cut_frame.shape, cut_box, 200))
    assert sharpness(cut) > whole_q.sharpness + 0.1  # the black edge, if it counted
    assert cut_q.sharpness <= whole_q.sharpness + 0.01  # same texture, same sharpness
    assert cut_q.score <= whole_q.score + 0.01
