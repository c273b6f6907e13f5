"""Face crops: the authors' clamped, stretched, bilinear cut; centred mode padded black; quality."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from ingest.crop_geometry import crop_region_xyxy
from ingest.crops import (
    crop_face,
    crop_in_frame_xyxy,
    crop_quality,
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


def test_box_corner_crop_is_the_authors_cut_of_our_box_resized_bilinear_to_rgb() -> None:
    frame = grid_frame()
    box = (100, 50, 160, 130)  # w 60, h 80: square 100..170 × 50..120
    crop = crop_face(frame, box, size_px=70, mode="box_corner")  # same size: no resampling
    assert crop.shape == (70, 70, 3) and crop.dtype == np.uint8
    np.testing.assert_array_equal(crop[..., 2], frame[50:120, 100:170, 0])  # RGB: B last
    np.testing.assert_array_equal(crop[..., 1], frame[50:120, 100:170, 1])
    assert (crop[..., 0] == 200).all()
    for size_px in (32, 256):  # shrunk and enlarged: both bilinear, as the authors do
        resized = crop_face(frame, box, size_px=size_px, mode="box_corner")
        expected = cv2.cvtColor(
            cv2.resize(frame[50:120, 100:170], (size_px, size_px), interpolation=cv2.INTER_LINEAR),
            cv2.COLOR_BGR2RGB,
        )
        np.testing.assert_array_equal(resized, expected)


def test_facellava_crop_is_its_region_of_the_frame_resized() -> None:
    frame = grid_frame()
    box = (300.0, 100.0, 372.0, 196.0)
    x0, y0, x1, y1 = crop_region_xyxy(box, (640, 360))
    crop = crop_face(frame, box, size_px=256)
    expected = cv2.resize(frame[y0:y1, x0:x1], (256, 256), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(crop, cv2.cvtColor(expected, cv2.COLOR_BGR2RGB))


@pytest.mark.parametrize("mode", ["facellava", "box_corner"])
def test_crop_at_the_frame_edge_is_clamped_and_stretched_not_padded(mode) -> None:
    frame = grid_frame()
    box = (600, 330, 660, 390)  # the square leaves a 640×360 frame right and below
    x0, y0, x1, y1 = crop_region_xyxy(box, (640, 360), mode)
    assert x1 <= 639 and y1 <= 359  # the authors' clamp stops at W - 1, H - 1
    if mode == "box_corner":
        assert (x0, y0, x1, y1) == (600, 330, 639, 359)
    crop = crop_face(frame, box, size_px=60, mode=mode)
    assert (crop[..., 0] == 200).all()  # frame everywhere, no black
    expected = cv2.resize(frame[y0:y1, x0:x1], (60, 60), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(crop, cv2.cvtColor(expected, cv2.COLOR_BGR2RGB))
    assert crop_in_frame_xyxy(frame.shape, box, size_px=60, mode=mode) == (0, 0, 60, 60)
    off = (700, 400, 760, 460)
    assert not crop_face(frame, off, size_px=32, mode=mode).any()
    x0, y0, x1, y1 = crop_in_frame_xyxy(frame.shape, off, size_px=32, mode=mode)
    assert x0 >= x1 and y0 >= y1


def test_centered_crop_leaving_the_frame_is_padded_black() -> None:
    frame = grid_frame()
    box = (610, 340, 650, 380)  # square 600..660 × 330..390 on a 640×360 frame
    crop = crop_face(frame, box, size_px=60, mode="centered", margin=0.25)
    assert crop.shape == (60, 60, 3)
    assert (crop[30:, :, :] == 0).all()  # below the frame
    assert (crop[:, 40:, :] == 0).all()  # right of the frame
    np.testing.assert_array_equal(crop[:30, :40, 2], frame[330:360, 600:640, 0])
    off = crop_face(frame, (700, 400, 760, 460), size_px=32, mode="centered")
    assert off.shape == (32, 32, 3) and not off.any()


def test_centered_mode_adds_margin_around_the_box_centre() -> None:
    frame = grid_frame()
    crop = crop_face(frame, (100, 50, 160, 130), size_px=120, mode="centered", margin=0.25)
    np.testing.assert_array_equal(crop[..., 1], frame[30:150, 70:190, 1])


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
    box = (610, 340, 650, 380)  # the centred square 600..660 × 330..390 leaves the frame
    crop = crop_face(frame, box, size_px=size_px, mode="centered")
    x0, y0, x1, y1 = crop_in_frame_xyxy(frame.shape, box, size_px=size_px, mode="centered")
    assert 0 == x0 < x1 < size_px and 0 == y0 < y1 < size_px
    assert (crop[y0:y1, x0:x1, 0] == 200).all()
    inside = (100, 50, 160, 130)
    full = (0, 0, size_px, size_px)
    assert crop_in_frame_xyxy(frame.shape, inside, size_px, mode="centered") == full
    x0, y0, x1, y1 = crop_in_frame_xyxy(frame.shape, (700, 400, 760, 460), size_px, "centered")
    assert x0 >= x1 and y0 >= y1  # off the frame: empty


def test_centered_face_cut_by_the_frame_edge_does_not_score_sharper_than_whole() -> None:
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
    whole = crop_face(whole_frame, whole_box, size_px=200, mode="centered", margin=0)
    cut = crop_face(cut_frame, cut_box, size_px=200, mode="centered", margin=0)
    whole_q = crop_quality(
        whole,
        whole_box,
        0.9,
        lm,
        crop_in_frame_xyxy(whole_frame.shape, whole_box, 200, "centered", 0),
    )
    cut_q = crop_quality(
        cut, cut_box, 0.9, lm, crop_in_frame_xyxy(cut_frame.shape, cut_box, 200, "centered", 0)
    )
    assert sharpness(cut) > whole_q.sharpness + 0.1  # the black edge, if it counted
    assert cut_q.sharpness <= whole_q.sharpness + 0.01  # same texture, same sharpness
    assert cut_q.score <= whole_q.score + 0.01
