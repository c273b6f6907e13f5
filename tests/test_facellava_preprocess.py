"""Tower preprocessing against the authors' outputs on real inputs (fixture `preprocess/`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.facellava.preprocess import (
    PreprocessError,
    preprocess_images,
    preprocess_videos,
    sample_frame_indices,
)

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def reference(testdata: Path):
    folder = testdata / "facellava-tiny" / "reference" / "preprocess"

    def load(name: str) -> torch.Tensor:
        return torch.load(folder / name, weights_only=True)

    return load


def test_frame_sampling_matches_the_authors_frame_ids():
    assert sample_frame_indices(60, 8) == [0, 8, 16, 25, 33, 42, 50, 59]
    assert sample_frame_indices(8, 8) == list(range(8))
    assert sample_frame_indices(1, 8) == [0] * 8


def test_image_path_matches_the_authors_bicubic_antialias_resize(reference):
    pixels = preprocess_images([reference("image_rgb_uint8_HWC.pt").numpy()], size_px=224)
    expected = reference("image_pixel_values.pt")
    assert pixels.shape == expected.shape
    assert (pixels - expected).abs().max().item() <= TOLERANCE


def test_video_frame_through_image_path_matches(reference):
    frame0 = reference("video_frames_uint8_THWC.pt")[0]
    pixels = preprocess_images(frame0[None], size_px=224)
    assert (pixels - reference("frame0_as_image_pixel_values.pt")).abs().max().item() <= TOLERANCE


def test_video_path_matches_the_authors_bilinear_pipeline(reference):
    frames = reference("video_frames_uint8_THWC.pt")
    pixels = preprocess_videos([frames], size_px=224)
    for name in ("video_pixel_values_from_pyav.pt", "video_pixel_values_from_decord_processor.pt"):
        expected = reference(name)
        assert pixels.shape == expected.shape
        assert (pixels - expected).abs().max().item() <= TOLERANCE


def test_long_clip_is_sampled_to_eight_frames_at_linspace_indices(reference):
    frames = reference("video_frames_uint8_THWC.pt")
    long_clip = torch.zeros((60, *frames.shape[1:]), dtype=torch.uint8)
    long_clip[sample_frame_indices(60)] = frames
    pixels = preprocess_videos([long_clip, frames], size_px=224)
    assert torch.equal(pixels[0], pixels[1])


def test_mixed_sizes_in_one_batch_keep_their_order():
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    large = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    batch = preprocess_images([small, large, small], size_px=32)
    assert batch.shape == (3, 3, 32, 32)
    assert torch.equal(batch[0], batch[2])
    assert torch.equal(batch[1], preprocess_images([large], size_px=32)[0])


def test_non_uint8_pixels_are_rejected():
    with pytest.raises(PreprocessError, match="uint8"):
        preprocess_images([np.zeros((32, 32, 3), dtype=np.float32)], size_px=32)
