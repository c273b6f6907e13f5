"""Pixel preprocessing for the Face-LLaVA towers, as the authors' pipeline does it.

Both paths run in torch on any device and on batches; the output size comes from the
tower config (`image_size`). Checked against the authors' outputs on real inputs
(`tests/test_facellava_preprocess.py`): both paths match exactly (max |diff| 0.0).

- Image (torchvision `ToTensor → Resize(bicubic, antialias) → CenterCrop → Normalize` in
  the authors' code): `torch.nn.functional.interpolate(mode="bicubic", antialias=True)`
  is the very kernel torchvision's tensor `Resize` calls, so no PIL path is involved.
- Video (pytorchvideo `/255 → NormalizeVideo → ShortSideScale → CenterCropVideo`):
  bilinear, `align_corners=False`, no antialias; normalisation BEFORE the resize.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from models.facellava.tasks import NUM_VIDEO_FRAMES
from models.facellava.tasks import sample_frame_indices as _sample_frame_indices

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class PreprocessError(ValueError):
    """Input pixels of the wrong shape or type for the towers."""


def sample_frame_indices(num_available: int, num_frames: int = NUM_VIDEO_FRAMES) -> list[int]:
    """Frame indices `floor(linspace(0, n-1, num_frames))` (`tasks.sample_frame_indices`);
    an empty clip raises `PreprocessError`."""
    try:
        return _sample_frame_indices(num_available, num_frames)
    except ValueError as error:
        raise PreprocessError(str(error)) from None


def _short_side_size(height: int, width: int, short_px: int) -> tuple[int, int]:
    # torchvision Resize(int) and pytorchvideo ShortSideScale both truncate the long side.
    if height <= width:
        return short_px, int(short_px * width / height)
    return int(short_px * height / width), short_px


def _center_crop(pixels: torch.Tensor, size_px: int) -> torch.Tensor:
    height, width = pixels.shape[-2:]
    if height < size_px or width < size_px:
        raise PreprocessError(f"cannot centre-crop {height}x{width} to {size_px}")
    top = round((height - size_px) / 2.0)
    left = round((width - size_px) / 2.0)
    return pixels[..., top : top + size_px, left : left + size_px]


def _stats(device: torch.device, ndim_after_channel: int) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (3,) + (1,) * ndim_after_channel
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32, device=device).view(shape)
    std = torch.tensor(CLIP_STD, dtype=torch.float32, device=device).view(shape)
    return mean, std


def _as_uint8_tensor(array: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    if isinstance(array, np.ndarray) and not array.flags.writeable:
        array = array.copy()  # torch refuses to wrap read-only memory (e.g. from PIL)
    tensor = torch.as_tensor(array)
    if tensor.dtype != torch.uint8:
        raise PreprocessError(f"expected uint8 RGB pixels, got {tensor.dtype}")
    if tensor.shape[-1] != 3:
        raise PreprocessError(
            f"expected channels-last RGB (..., 3), got shape {tuple(tensor.shape)}"
        )
    return tensor.to(device)


def _grouped_by_shape(items: Sequence[np.ndarray | torch.Tensor]) -> dict[tuple, list[int]]:
    groups: dict[tuple, list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(tuple(item.shape), []).append(index)
    return groups


def preprocess_images(
    images_rgb: Sequence[np.ndarray | torch.Tensor] | torch.Tensor,
    size_px: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """(H, W, 3) uint8 RGB images → (B, 3, size_px, size_px) float32 tower input."""
    device = torch.device(device)
    if len(images_rgb) == 0:
        return torch.empty((0, 3, size_px, size_px), dtype=torch.float32, device=device)
    out = torch.empty((len(images_rgb), 3, size_px, size_px), dtype=torch.float32, device=device)
    mean, std = _stats(device, 2)
    for shape, indices in _grouped_by_shape(images_rgb).items():
        if len(shape) != 3:
            raise PreprocessError(f"an image must be (H, W, 3), got {shape}")
        batch = torch.stack([_as_uint8_tensor(images_rgb[i], device) for i in indices])
        pixels = batch.permute(0, 3, 1, 2).float() / 255.0
        new_size = _short_side_size(shape[0], shape[1], size_px)
        if new_size != (shape[0], shape[1]):
            pixels = F.interpolate(
                pixels, size=new_size, mode="bicubic", align_corners=False, antialias=True
            )
        pixels = _center_crop(pixels, size_px)
        out[indices] = (pixels - mean) / std
    return out


def preprocess_videos(
    clips_rgb: Sequence[np.ndarray | torch.Tensor] | torch.Tensor,
    size_px: int,
    num_frames: int = NUM_VIDEO_FRAMES,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """(T, H, W, 3) uint8 RGB clips → (B, 3, num_frames, size_px, size_px) float32.

    A clip with T != num_frames is sampled with `sample_frame_indices` first.
    """
    device = torch.device(device)
    out = torch.empty(
        (len(clips_rgb), 3, num_frames, size_px, size_px), dtype=torch.float32, device=device
    )
    if len(clips_rgb) == 0:
        return out
    mean, std = _stats(device, 3)
    for shape, indices in _grouped_by_shape(clips_rgb).items():
        if len(shape) != 4:
            raise PreprocessError(f"a clip must be (T, H, W, 3), got {shape}")
        frame_ids = sample_frame_indices(shape[0], num_frames)
        batch = torch.stack([_as_uint8_tensor(clips_rgb[i], device)[frame_ids] for i in indices])
        pixels = batch.permute(0, 4, 1, 2, 3).float() / 255.0  # (B, 3, T, H, W)
        pixels = (pixels - mean) / std
        new_size = _short_side_size(shape[1], shape[2], size_px)
        if new_size != (shape[1], shape[2]):
            count = len(indices)
            frames = pixels.permute(0, 2, 1, 3, 4).reshape(count * num_frames, 3, *shape[1:3])
            frames = F.interpolate(frames, size=new_size, mode="bilinear", align_corners=False)
            pixels = frames.reshape(count, num_frames, 3, *new_size).permute(0, 2, 1, 3, 4)
        out[indices] = _center_crop(pixels, size_px)
    return out
