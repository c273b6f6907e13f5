"""BlazeFace short-range, the face detector of the Face-LLaVA authors' crop tool, in PyTorch.

MediaPipe's Tasks `FaceDetector` (0.10.21, default options) as the authors ran it,
written from the published architecture and MediaPipe's documented post-processing:

1. **Input**: the whole frame, letterboxed to a square (the square's side is the frame's
   long side, centred; the rest zero) and warped to 128×128 with OpenCV's bilinear warp
   (integer pixel-centre convention, as MediaPipe's CPU image-to-tensor converter does),
   values mapped to [-1, 1].
2. **Network**: a 5×5 stride-2 convolution to 24 channels, then 16 BlazeBlocks (3×3
   depthwise + 1×1 convolution, added to the input, which is max-pooled for stride 2
   and zero-padded for more channels; ReLU after each sum); TensorFlow "SAME" padding.
   Two heads: at 16×16 (88 channels) 2 anchors per cell, at 8×8 (96 channels) 6; per
   anchor 1 score logit and 16 regressors (box centre x, y, width, height, then 6
   keypoints x, y: right eye, left eye, nose tip, mouth, right ear, left ear).
3. **Anchors**: 896, centred on the cells ((i + 0.5) / cells), unit size.
4. **Decoding**: regressors / 128 added to the anchor centre; score sigmoid(logit
   clipped to ±100), kept when ≥ 0.5.
5. **Weighted non-max suppression**: highest score first; every remaining box with IoU
   > 0.3 with it (itself included) is merged into one box and keypoints, averaged with
   the candidates' scores as weights; the merged face keeps the top score.
6. Boxes and keypoints mapped back from the letterbox to frame pixels (floats; the pixel
   box MediaPipe reports is `ingest.crop_geometry.mediapipe_pixel_box` of this box).

Weights: `models/blazeface_weights/blazeface_short_range.safetensors`, converted from the
`.tflite` of the `mediapipe==0.10.21` wheel by `scripts/convert_blazeface.py`
(Apache-2.0, see the NOTICE beside it).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.devices import resolve_device
from models.weights import WeightsError

WEIGHTS_PATH = Path(__file__).parent / "blazeface_weights" / "blazeface_short_range.safetensors"
INPUT_SIZE = 128
MIN_SCORE = 0.5
SUPPRESSION_IOU = 0.3
SCORE_CLIP = 100.0
NUM_KEYPOINTS = 6

# (input channels, output channels, stride) of the 16 BlazeBlocks, in order.
BLOCKS: tuple[tuple[int, int, int], ...] = (
    (24, 24, 1), (24, 28, 1), (28, 32, 2), (32, 36, 1), (36, 42, 1), (42, 48, 2),
    (48, 56, 1), (56, 64, 1), (64, 72, 1), (72, 80, 1), (80, 88, 1),
    (88, 96, 2), (96, 96, 1), (96, 96, 1), (96, 96, 1), (96, 96, 1),
)  # fmt: skip
FINE_FEATURES_AFTER_BLOCK = 10  # the 16×16×88 map the first head reads
# Per head: (grid cells per side, anchors per cell).
ANCHOR_GRIDS: tuple[tuple[int, int], ...] = ((16, 2), (8, 6))


class BlazeFaceWeightsError(WeightsError):
    """The weights file is missing or is not the BlazeFace short-range conversion."""


# --------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------


def _same_pad(x: Tensor, kernel: int, stride: int) -> Tensor:
    """TensorFlow 'SAME' padding (the extra pixel of an odd total goes right and bottom)."""
    size = x.shape[-1]
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    before = total // 2
    return F.pad(x, (before, total - before, before, total - before))


class BlazeBlock(nn.Module):
    """3×3 depthwise + 1×1 convolution, plus the (pooled, channel-padded) input, then ReLU."""

    def __init__(self, channels_in: int, channels_out: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra_channels = channels_out - channels_in
        self.depthwise = nn.Conv2d(channels_in, channels_in, 3, stride, groups=channels_in)
        self.pointwise = nn.Conv2d(channels_in, channels_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) → (B, C_out, H / stride, W / stride)."""
        branch = self.pointwise(self.depthwise(_same_pad(x, 3, self.stride)))
        skip = F.max_pool2d(x, 2) if self.stride == 2 else x
        if self.extra_channels:
            skip = F.pad(skip, (0, 0, 0, 0, 0, self.extra_channels))
        return F.relu(branch + skip)


class BlazeFaceNet(nn.Module):
    """The short-range network: (B, 3, 128, 128) in [-1, 1] → logits (B, 896), regressors
    (B, 896, 16), anchors in MediaPipe's order (per head: row, column, anchor)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 24, 5, 2)
        self.blocks = nn.ModuleList(BlazeBlock(*spec) for spec in BLOCKS)
        self.classifier_16 = nn.Conv2d(88, 2, 1)
        self.regressor_16 = nn.Conv2d(88, 32, 1)
        self.classifier_8 = nn.Conv2d(96, 6, 1)
        self.regressor_8 = nn.Conv2d(96, 96, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """See the class doc."""
        x = F.relu(self.stem(_same_pad(x, 5, 2)))
        fine = x
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index == FINE_FEATURES_AFTER_BLOCK:
                fine = x
        batch = x.shape[0]

        def per_anchor(head: Tensor, values: int) -> Tensor:
            return head.permute(0, 2, 3, 1).reshape(batch, -1, values)

        logits = torch.cat(
            [per_anchor(self.classifier_16(fine), 1), per_anchor(self.classifier_8(x), 1)], 1
        )
        regressors = torch.cat(
            [per_anchor(self.regressor_16(fine), 16), per_anchor(self.regressor_8(x), 16)], 1
        )
        return logits[..., 0], regressors


def tflite_names() -> dict[str, str]:
    """Our parameter name → the converted file's name (the `.tflite` layer names)."""
    names = {"stem": "conv2d"}
    for i in range(len(BLOCKS)):
        names[f"blocks.{i}.depthwise"] = "depthwise_conv2d" + (f"_{i}" if i else "")
        names[f"blocks.{i}.pointwise"] = f"conv2d_{i + 1}"
    names.update(
        classifier_16="classificator_8",
        regressor_16="regressor_8",
        classifier_8="classificator_16",
        regressor_8="regressor_16",
    )  # the file names heads by their anchors' stride (8, 16), ours by their grid
    return names


def load_blazeface(path: Path = WEIGHTS_PATH) -> BlazeFaceNet:
    """The network with the converted weights (float16 in the file, float32 here)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        stored = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise BlazeFaceWeightsError(f"cannot read BlazeFace weights {path}: {exc}") from exc
    net = BlazeFaceNet()
    state = {}
    for ours, theirs in tflite_names().items():
        for kind in ("weight", "bias"):
            key = f"{theirs}.{kind}"
            if key not in stored:
                raise BlazeFaceWeightsError(f"{path} lacks {key}: not the BlazeFace conversion")
            state[f"{ours}.{kind}"] = torch.from_numpy(stored[key].astype(np.float32))
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BlazeFaceWeightsError(f"{path} does not fit BlazeFace short-range: {exc}") from exc
    return net.eval()


# --------------------------------------------------------------------------------------
# Anchors, decoding, suppression
# --------------------------------------------------------------------------------------


def anchor_centres() -> np.ndarray:
    """(896, 2) float32 anchor centres (x, y) in [0, 1], in the network's output order."""
    centres = []
    for cells, per_cell in ANCHOR_GRIDS:
        ys, xs = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
        grid = np.stack([(xs + 0.5) / cells, (ys + 0.5) / cells], -1).reshape(-1, 1, 2)
        centres.append(np.repeat(grid, per_cell, axis=1).reshape(-1, 2))
    return np.concatenate(centres).astype(np.float32)


def decode(
    logits: np.ndarray, regressors: np.ndarray, anchors: np.ndarray, min_score: float = MIN_SCORE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's raw outputs → (scores (n,), boxes (n, 4) xyxy, keypoints (n, 6, 2)), all in
    [0, 1] letterbox coordinates, for the anchors scoring at least `min_score`."""
    with np.errstate(over="ignore"):  # exp(100) is inf in float32: score 0, as in MediaPipe
        scores = 1.0 / (1.0 + np.exp(-np.clip(logits, -SCORE_CLIP, SCORE_CLIP)))
    keep = np.flatnonzero(scores >= min_score)
    raw = regressors[keep].astype(np.float32) / np.float32(INPUT_SIZE)
    centre = anchors[keep]
    box_centre = raw[:, 0:2] + centre
    half = raw[:, 2:4] / 2
    boxes = np.concatenate([box_centre - half, box_centre + half], 1)
    keypoints = raw[:, 4:].reshape(-1, NUM_KEYPOINTS, 2) + centre[:, None, :]
    valid = (half >= 0).all(1)  # MediaPipe drops boxes of negative size
    return scores[keep][valid], boxes[valid], keypoints[valid]


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box with each of `boxes` (0 where they do not overlap)."""
    w = np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])
    h = np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])
    inter = np.where((w > 0) & (h > 0), w * h, 0.0)
    area = (box[2] - box[0]) * (box[3] - box[1])
    union = area + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def weighted_nms(
    scores: np.ndarray,
    boxes: np.ndarray,
    keypoints: np.ndarray,
    threshold: float = SUPPRESSION_IOU,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MediaPipe's weighted non-max suppression (see the module doc, step 5)."""
    order = np.argsort(-scores, kind="stable")
    out_scores, out_boxes, out_points = [], [], []
    while order.size:
        top = order[0]
        overlap = box_iou(boxes[top], boxes[order]) > threshold
        merged, order = order[overlap], order[~overlap]
        weights = scores[merged][:, None]
        total = weights.sum()
        out_scores.append(scores[top])
        out_boxes.append((boxes[merged] * weights).sum(0) / total)
        out_points.append((keypoints[merged] * weights[:, :, None]).sum(0) / total)
    if not out_scores:
        return (
            np.zeros((0,), np.float32),
            np.zeros((0, 4), np.float32),
            np.zeros((0, NUM_KEYPOINTS, 2), np.float32),
        )
    return (
        np.asarray(out_scores, np.float32),
        np.asarray(out_boxes, np.float32),
        np.asarray(out_points, np.float32),
    )


# --------------------------------------------------------------------------------------
# Letterbox and the detector
# --------------------------------------------------------------------------------------


def letterbox_square(frame_wh: tuple[int, int]) -> tuple[float, float, float]:
    """The square the frame is fitted into: (left, top, side) in frame pixels."""
    width, height = frame_wh
    side = float(max(width, height))
    return (width - side) / 2, (height - side) / 2, side


def to_input(image_rgb: np.ndarray) -> np.ndarray:
    """One RGB uint8 frame → the network's (128, 128, 3) float32 input in [-1, 1]."""
    height, width = image_rgb.shape[:2]
    left, top, side = letterbox_square((width, height))
    right, bottom = left + side, top + side
    # The square's corners (bottom-left, top-left, top-right, bottom-right) onto the
    # tensor's, as a perspective transform in float32 like MediaPipe's converter.
    source = np.array([[left, bottom], [left, top], [right, top], [right, bottom]], np.float32)
    size = float(INPUT_SIZE)
    target = np.array([[0, size], [0, 0], [size, 0], [size, size]], np.float32)
    matrix = cv2.getPerspectiveTransform(source, target)
    warped = cv2.warpPerspective(
        np.ascontiguousarray(image_rgb),
        matrix,
        (INPUT_SIZE, INPUT_SIZE),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )
    return warped.astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)


@dataclass(frozen=True)
class BlazeFaces:
    """BlazeFace's faces in one frame, in frame pixels (floats, not truncated).

    `xyxy` (N, 4) float32 boxes (may reach past the frame), `scores` (N,) float32,
    `keypoints` (N, 6, 2) float32: right eye, left eye, nose tip, mouth, right ear
    tragion, left ear tragion (MediaPipe's order; "right" is the person's right).
    """

    xyxy: np.ndarray
    scores: np.ndarray
    keypoints: np.ndarray

    def __len__(self) -> int:
        return int(self.xyxy.shape[0])


@dataclass(frozen=True)
class BlazeFaceTiming:
    """Measured BlazeFace speed: whole-call milliseconds per frame at one batch size."""

    batch_size: int
    ms_per_frame: float


class BlazeFaceDetector:
    """Batched BlazeFace short-range on RGB or BGR uint8 frames (see the module doc)."""

    def __init__(self, net: BlazeFaceNet, device: str = "cpu") -> None:
        self.device = resolve_device(device, "BlazeFace")
        self.net = net.to(self.device)
        self.anchors = anchor_centres()

    @classmethod
    def load(cls, path: Path = WEIGHTS_PATH, device: str = "cpu") -> BlazeFaceDetector:
        """The detector with the shipped (or given) weights."""
        return cls(load_blazeface(path), device)

    @torch.inference_mode()
    def detect(self, images: Sequence[np.ndarray], bgr: bool = True) -> list[BlazeFaces]:
        """Faces in each frame ((H, W, 3) uint8; BGR unless `bgr=False`)."""
        if not images:
            return []
        inputs = []
        for image in images:
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"BlazeFace needs (H, W, 3) uint8 frames, got {image.shape}")
            rgb = image[:, :, ::-1] if bgr else image
            inputs.append(to_input(rgb))
        batch = torch.from_numpy(np.stack(inputs)).permute(0, 3, 1, 2).to(self.device)
        logits, regressors = self.net(batch)
        logits_np, regressors_np = logits.float().cpu().numpy(), regressors.float().cpu().numpy()
        return [
            self._faces(logits_np[i], regressors_np[i], (image.shape[1], image.shape[0]))
            for i, image in enumerate(images)
        ]

    def _faces(
        self, logits: np.ndarray, regressors: np.ndarray, frame_wh: tuple[int, int]
    ) -> BlazeFaces:
        scores, boxes, keypoints = weighted_nms(*decode(logits, regressors, self.anchors))
        left, top, side = letterbox_square(frame_wh)
        offset = np.array([left, top], np.float32)
        scale = np.float32(side)
        xyxy = (boxes.reshape(-1, 2, 2) * scale + offset).reshape(-1, 4)
        return BlazeFaces(
            xyxy.astype(np.float32), scores, (keypoints * scale + offset).astype(np.float32)
        )

    def time_detection(
        self, images: Sequence[np.ndarray], batch_size: int, repeats: int = 3
    ) -> BlazeFaceTiming:
        """Best-of-`repeats` whole-call time per frame over `images` in batches."""
        self.detect(list(images[:batch_size]))  # warm-up
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            for i in range(0, len(images), batch_size):
                self.detect(list(images[i : i + batch_size]))
            best = min(best, time.perf_counter() - start)
        return BlazeFaceTiming(batch_size, 1000.0 * best / max(len(images), 1))
