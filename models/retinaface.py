"""RetinaFace face detector (MobileNet-0.25 / ResNet-50), loading the standard checkpoints.

Read top to bottom: options → configuration → building blocks → `RetinaFace` (module
names = checkpoint keys, so `Pytorch_Retinaface` state dicts load with strict=True) →
loading (`load_retinaface`: backbone from the keys, BatchNorm folded) → priors, decoding
and NMS exactly as the reference detector → `RetinaFaceDetector`, the batched detector
the pipeline uses (`detect(images_bgr) -> list[Detections]` in original-frame pixels).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import structlog
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from models.detections import Detections
from models.devices import resolve_device
from models.retinaface_options import DetectorOptions
from models.weights import load_torch_weights, resolve_weights

log = structlog.get_logger(__name__)


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------

# Keys some checkpoints carry that are not part of the detector (the ImageNet classifier
# of a backbone saved whole). They are dropped by name, and logged, never silently.
SKIPPED_CHECKPOINT_KEYS = ("body.fc.weight", "body.fc.bias")

PIXEL_MEAN_BGR = (104.0, 117.0, 123.0)
MIN_SIZES_PX = ((16, 32), (64, 128), (256, 512))
STEPS_PX = (8, 16, 32)
VARIANCES = (0.1, 0.2)
PRE_NMS_MIN_SCORE = 0.02
PRE_NMS_TOP_K = 5000
POST_NMS_KEEP = 750


class DetectorCheckpointError(Exception):
    """A weights file that is not a RetinaFace checkpoint this code can load."""


@dataclass(frozen=True)
class RetinaFaceConfig:
    """Architecture of one RetinaFace variant."""

    backbone: Literal["mobilenet0.25", "resnet50"]
    backbone_channels: tuple[int, int, int]  # outputs at strides 8, 16, 32
    fpn_width: int
    anchors_per_location: int = 2

    @property
    def leaky_slope(self) -> float:
        """LeakyReLU slope of the FPN/SSH: 0.1 for narrow (mobilenet) heads, else plain ReLU."""
        return 0.1 if self.fpn_width <= 64 else 0.0


MOBILENET_CONFIG = RetinaFaceConfig("mobilenet0.25", (64, 128, 256), 64)
RESNET50_CONFIG = RetinaFaceConfig("resnet50", (512, 1024, 2048), 256)


# --------------------------------------------------------------------------------------
# Building blocks (Sequential indices = checkpoint key names)
# --------------------------------------------------------------------------------------


def conv_bn(
    in_ch: int, out_ch: int, *, kernel: int = 3, stride: int = 1, slope: float | None = 0.0
) -> nn.Sequential:
    """Conv (no bias) → BatchNorm → LeakyReLU(slope); no activation when slope is None."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel, stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_ch),
    ]
    if slope is not None:
        layers.append(nn.LeakyReLU(slope, inplace=True))
    return nn.Sequential(*layers)


def conv_dw(in_ch: int, out_ch: int, stride: int, slope: float = 0.1) -> nn.Sequential:
    """Depthwise-separable block: 3×3 depthwise conv-bn-act, then 1×1 conv-bn-act."""
    return nn.Sequential(
        nn.Conv2d(in_ch, in_ch, 3, stride, 1, groups=in_ch, bias=False),
        nn.BatchNorm2d(in_ch),
        nn.LeakyReLU(slope, inplace=True),
        nn.Conv2d(in_ch, out_ch, 1, 1, 0, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.LeakyReLU(slope, inplace=True),
    )


class MobileNetV1Body(nn.Module):
    """MobileNet-0.25 backbone: three stages with outputs at strides 8, 16, 32."""

    def __init__(self) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(
            conv_bn(3, 8, stride=2, slope=0.1),
            conv_dw(8, 16, 1),
            conv_dw(16, 32, 2),
            conv_dw(32, 32, 1),
            conv_dw(32, 64, 2),
            conv_dw(64, 64, 1),
        )
        self.stage2 = nn.Sequential(conv_dw(64, 128, 2), *(conv_dw(128, 128, 1) for _ in range(5)))
        self.stage3 = nn.Sequential(conv_dw(128, 256, 2), conv_dw(256, 256, 1))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        c3 = self.stage1(x)
        c4 = self.stage2(c3)
        return c3, c4, self.stage3(c4)


class Bottleneck(nn.Module):
    """ResNet-50 bottleneck (torchvision naming; stride on the 3×3 conv)."""

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int) -> None:
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50Body(nn.Module):
    """ResNet-50 backbone without its classifier; outputs of layer2/3/4 (strides 8/16/32)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_ch = 64
        for index, (width, blocks, stride) in enumerate(
            ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)), start=1
        ):
            layer = []
            for block in range(blocks):
                layer.append(Bottleneck(in_ch, width, stride if block == 0 else 1))
                in_ch = width * Bottleneck.expansion
            setattr(self, f"layer{index}", nn.Sequential(*layer))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        return c3, c4, self.layer4(c4)


class FPN(nn.Module):
    """Feature pyramid: 1×1 lateral convs, top-down nearest upsampling, 3×3 merges."""

    def __init__(self, in_channels: tuple[int, int, int], width: int, slope: float) -> None:
        super().__init__()
        self.output1 = conv_bn(in_channels[0], width, kernel=1, slope=slope)
        self.output2 = conv_bn(in_channels[1], width, kernel=1, slope=slope)
        self.output3 = conv_bn(in_channels[2], width, kernel=1, slope=slope)
        self.merge1 = conv_bn(width, width, slope=slope)
        self.merge2 = conv_bn(width, width, slope=slope)

    def forward(self, c3: Tensor, c4: Tensor, c5: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        p3, p4, p5 = self.output1(c3), self.output2(c4), self.output3(c5)
        p4 = self.merge2(p4 + F.interpolate(p5, size=p4.shape[-2:], mode="nearest"))
        p3 = self.merge1(p3 + F.interpolate(p4, size=p3.shape[-2:], mode="nearest"))
        return p3, p4, p5


class SSH(nn.Module):
    """Single-stage headless context module: 3×3, 5×5 and 7×7 (stacked 3×3) branches."""

    def __init__(self, width: int, slope: float) -> None:
        super().__init__()
        self.conv3X3 = conv_bn(width, width // 2, slope=None)
        self.conv5X5_1 = conv_bn(width, width // 4, slope=slope)
        self.conv5X5_2 = conv_bn(width // 4, width // 4, slope=None)
        self.conv7X7_2 = conv_bn(width // 4, width // 4, slope=slope)
        self.conv7x7_3 = conv_bn(width // 4, width // 4, slope=None)

    def forward(self, x: Tensor) -> Tensor:
        branch5_1 = self.conv5X5_1(x)
        out = torch.cat(
            (
                self.conv3X3(x),
                self.conv5X5_2(branch5_1),
                self.conv7x7_3(self.conv7X7_2(branch5_1)),
            ),
            dim=1,
        )
        return F.relu(out, inplace=True)


class Head(nn.Module):
    """A 1×1 conv predicting `values` numbers per anchor, laid out (N, H·W·anchors, values)."""

    def __init__(self, width: int, anchors: int, values: int) -> None:
        super().__init__()
        self.values = values
        self.conv1x1 = nn.Conv2d(width, anchors * values, 1)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1)
        return out.reshape(out.shape[0], -1, self.values)


# --------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------


class _PaddedRegion:
    """0/1 masks of each frame's own area in a zero-padded batch, per feature-map size.

    Every conv/pool here maps a size S to ceil(S/stride), so a frame of H×W occupies the
    top-left ceil(H/2^k)×ceil(W/2^k) of the padded map at level k. Zeroing the rest
    before every spatial op makes each frame see exactly the zero padding it would see
    alone, so a padded batch equals per-frame inference.
    """

    def __init__(self, frame_sizes_hw: Sequence[tuple[int, int]], like: Tensor) -> None:
        self.frame_sizes_hw = list(frame_sizes_hw)
        self.padded_hw = (int(like.shape[-2]), int(like.shape[-1]))
        self.device, self.dtype = like.device, like.dtype
        self._masks: dict[tuple[int, int], Tensor] = {}

    def mask(self, height: int, width: int) -> Tensor:
        key = (height, width)
        if key not in self._masks:
            self._masks[key] = self._build(height, width)
        return self._masks[key]

    def _build(self, height: int, width: int) -> Tensor:
        ph, pw = self.padded_hw
        for level in range(16):
            div = 2**level
            if (-(-ph // div), -(-pw // div)) == (height, width):
                break
        else:
            raise RuntimeError(f"feature map {height}×{width} is no level of {ph}×{pw}")
        mask = torch.zeros(len(self.frame_sizes_hw), 1, height, width)
        for i, (h, w) in enumerate(self.frame_sizes_hw):
            mask[i, :, : -(-h // div), : -(-w // div)] = 1.0
        return mask.to(self.device, self.dtype)


class RetinaFace(nn.Module):
    """RetinaFace: backbone → FPN → SSH per level → class/box/landmark heads."""

    def __init__(self, config: RetinaFaceConfig) -> None:
        super().__init__()
        self.config = config
        self.body = MobileNetV1Body() if config.backbone == "mobilenet0.25" else ResNet50Body()
        width, slope, anchors = config.fpn_width, config.leaky_slope, config.anchors_per_location
        self.fpn = FPN(config.backbone_channels, width, slope)
        self.ssh1 = SSH(width, slope)
        self.ssh2 = SSH(width, slope)
        self.ssh3 = SSH(width, slope)
        self.ClassHead = nn.ModuleList(Head(width, anchors, 2) for _ in range(3))
        self.BboxHead = nn.ModuleList(Head(width, anchors, 4) for _ in range(3))
        self.LandmarkHead = nn.ModuleList(Head(width, anchors, 10) for _ in range(3))
        self._region: _PaddedRegion | None = None
        for module in self.modules():
            spatial_conv = isinstance(module, nn.Conv2d) and module.kernel_size != (1, 1)
            if spatial_conv or isinstance(module, nn.MaxPool2d):
                module.register_forward_pre_hook(self._mask_padding)

    def _mask_padding(self, _module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor] | None:
        if self._region is None:
            return None
        x = args[0]
        return (x * self._region.mask(int(x.shape[-2]), int(x.shape[-1])),)

    def forward(
        self, x: Tensor, frame_sizes_hw: Sequence[tuple[int, int]] | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Raw outputs (box offsets, class logits, landmark offsets), each (N, priors, k).

        `frame_sizes_hw` gives each frame's own size when `x` is a zero-padded batch of
        frames of different sizes; outputs at priors outside a frame are meaningless.
        """
        padded = frame_sizes_hw is not None and any(
            tuple(hw) != tuple(x.shape[-2:]) for hw in frame_sizes_hw
        )
        self._region = _PaddedRegion(frame_sizes_hw, x) if padded else None
        try:
            levels = self.fpn(*self.body(x))
            features = [
                ssh(level)
                for ssh, level in zip((self.ssh1, self.ssh2, self.ssh3), levels, strict=True)
            ]
        finally:
            self._region = None
        boxes = torch.cat([head(f) for head, f in zip(self.BboxHead, features, strict=True)], 1)
        logits = torch.cat([head(f) for head, f in zip(self.ClassHead, features, strict=True)], 1)
        marks = torch.cat([head(f) for head, f in zip(self.LandmarkHead, features, strict=True)], 1)
        return boxes, logits, marks

    def fold_batchnorm(self) -> None:
        """Fold every BatchNorm into the conv before it (eval only); speeds up inference."""
        self.eval()
        for module in list(self.modules()):
            if isinstance(module, nn.Sequential):
                for i in range(len(module) - 1):
                    if isinstance(module[i], nn.Conv2d) and isinstance(
                        module[i + 1], nn.BatchNorm2d
                    ):
                        _fold_into(module[i], module[i + 1])
                        module[i + 1] = nn.Identity()
            elif isinstance(module, (Bottleneck, ResNet50Body)):
                for n in (1, 2, 3):
                    conv, bn = getattr(module, f"conv{n}", None), getattr(module, f"bn{n}", None)
                    if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                        _fold_into(conv, bn)
                        setattr(module, f"bn{n}", nn.Identity())


def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Replace conv's weight/bias in place by conv∘bn (keeps hooks on the conv)."""
    weight, bias = fuse_conv_bn_weights(
        conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
    )
    conv.weight, conv.bias = weight, bias


def config_from_state_dict(state: dict[str, Tensor]) -> RetinaFaceConfig:
    """The variant a checkpoint's keys belong to."""
    if "body.stage1.0.0.weight" in state:
        return MOBILENET_CONFIG
    if "body.layer1.0.conv1.weight" in state:
        return RESNET50_CONFIG
    raise DetectorCheckpointError(
        "not a RetinaFace checkpoint: expected body.stage1.* (MobileNet-0.25) or "
        f"body.layer1.* (ResNet-50) keys, found e.g. {sorted(state)[:3]}"
    )


def load_retinaface(path: Path, device: str | torch.device = "cpu") -> RetinaFace:
    """Build the variant matching the checkpoint at `path` and load it with strict=True."""
    raw = load_torch_weights(path, "RetinaFace weights")
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict):
        raise DetectorCheckpointError(f"{path} holds a {type(raw).__name__}, not a state dict")
    state = {key.removeprefix("module."): value for key, value in raw.items()}
    skipped = [key for key in SKIPPED_CHECKPOINT_KEYS if key in state]
    for key in skipped:
        del state[key]
    if skipped:
        log.info("retinaface_keys_skipped", keys=skipped, reason="backbone classifier")
    config = config_from_state_dict(state)
    net = RetinaFace(config)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise DetectorCheckpointError(
            f"{path} does not fit RetinaFace-{config.backbone}: {exc}"
        ) from exc
    net.fold_batchnorm()
    net.eval().requires_grad_(False)
    return net.to(device=device, memory_format=torch.channels_last)


# --------------------------------------------------------------------------------------
# Post-processing: priors, decoding, NMS
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Priors:
    """Anchor boxes of a padded input size, in input pixels, in the network's output order."""

    center_xy: np.ndarray  # (P, 2) float32
    size_px: np.ndarray  # (P, 1) float32
    origin_xy: np.ndarray  # (P, 2) int: top-left pixel of the anchor's feature cell

    @classmethod
    def for_size(cls, height: int, width: int) -> Priors:
        """Priors of an input of height×width (feature maps ceil(size/step))."""
        centers, sizes, origins = [], [], []
        for step, min_sizes in zip(STEPS_PX, MIN_SIZES_PX, strict=True):
            rows, cols = -(-height // step), -(-width // step)
            ii, jj, mm = np.meshgrid(
                np.arange(rows), np.arange(cols), np.asarray(min_sizes), indexing="ij"
            )
            ii, jj, mm = ii.ravel(), jj.ravel(), mm.ravel()
            centers.append(np.stack(((jj + 0.5) * step, (ii + 0.5) * step), 1))
            sizes.append(mm[:, None])
            origins.append(np.stack((jj * step, ii * step), 1))
        return cls(
            np.concatenate(centers).astype(np.float32),
            np.concatenate(sizes).astype(np.float32),
            np.concatenate(origins),
        )

    def inside(self, height: int, width: int) -> np.ndarray:
        """Which priors belong to a frame of height×width at the top-left of the input."""
        return (self.origin_xy[:, 0] < width) & (self.origin_xy[:, 1] < height)


def nms(boxes_xyxy: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS: indices kept, best first; IoU with the reference's +1 pixel areas."""
    x1, y1, x2, y2 = boxes_xyxy.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(scores)[::-1]
    keep = []
    while order.size > 0:
        best, rest = order[0], order[1:]
        keep.append(best)
        inter_w = np.maximum(
            0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1
        )
        inter_h = np.maximum(
            0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1
        )
        inter = inter_w * inter_h
        iou = inter / (areas[best] + areas[rest] - inter)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def select_faces(
    boxes_xyxy: np.ndarray,
    scores: np.ndarray,
    *,
    score_threshold: float,
    nms_threshold: float,
) -> np.ndarray:
    """Indices of the faces the reference keeps, best first.

    The reference keeps scores > 0.02, the top 5000, runs NMS, keeps 750, then drops
    scores below `score_threshold`. A box is only ever suppressed by a higher-scoring
    one, so dropping low scores first gives the same faces with far less NMS work.
    """
    candidates = np.flatnonzero((scores > PRE_NMS_MIN_SCORE) & (scores >= score_threshold))
    candidates = candidates[np.argsort(scores[candidates])[::-1][:PRE_NMS_TOP_K]]
    kept = nms(boxes_xyxy[candidates], scores[candidates], nms_threshold)[:POST_NMS_KEEP]
    return candidates[kept]


def decode(
    priors: Priors, index: np.ndarray, box_offsets: np.ndarray, landmark_offsets: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (K, 4) and landmarks (K, 5, 2) in input pixels for the priors at `index`."""
    center, size = priors.center_xy[index], priors.size_px[index]
    box_center = center + box_offsets[:, :2] * VARIANCES[0] * size
    box_size = size * np.exp(box_offsets[:, 2:] * VARIANCES[1])
    top_left = box_center - box_size / 2
    boxes = np.concatenate((top_left, top_left + box_size), 1)
    landmarks = center[:, None, :] + landmark_offsets.reshape(-1, 5, 2) * (
        VARIANCES[0] * size[:, :, None]
    )
    return boxes.astype(np.float32), landmarks.astype(np.float32)


# --------------------------------------------------------------------------------------
# The detector
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DetectionTiming:
    """Wall time of detection over a set of frames at one batch size."""

    batch_size: int
    frames: int
    ms_per_batch: float
    ms_per_frame: float

    @property
    def frames_per_s(self) -> float:
        return 1000.0 / self.ms_per_frame if self.ms_per_frame > 0 else float("inf")


class RetinaFaceDetector:
    """Batched RetinaFace on BGR frames of any (mixed) sizes; results in original pixels.

    Use one detector from one thread at a time (the network keeps per-call padding state).
    """

    def __init__(
        self,
        net: RetinaFace,
        *,
        score_threshold: float = 0.5,
        nms_threshold: float = 0.4,
        max_side_px: int | None = 640,
        max_batch: int = 16,
    ) -> None:
        self.net = net
        self.device = next(net.parameters()).device
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.max_side_px = max_side_px
        self.max_batch = max_batch
        self._mean = torch.tensor(PIXEL_MEAN_BGR, device=self.device)
        self._priors: dict[tuple[int, int], Priors] = {}

    @classmethod
    def from_options(cls, opts: DetectorOptions) -> RetinaFaceDetector:
        """Resolve the weights (path or hub), load them and pick the device."""
        path = resolve_weights(opts.weights, opts.weights_sha256, opts.cache_dir)
        device = resolve_device(opts.device, "detector")
        net = load_retinaface(path, device)
        log.info(
            "retinaface_loaded", weights=str(path), backbone=net.config.backbone, device=device
        )
        return cls(
            net,
            score_threshold=opts.score_threshold,
            nms_threshold=opts.nms_threshold,
            max_side_px=opts.max_side_px,
            max_batch=opts.max_batch,
        )

    def detect(self, images_bgr: Sequence[np.ndarray]) -> list[Detections]:
        """Faces in each (H, W, 3) uint8 BGR image, in batches of at most `max_batch`."""
        results: list[Detections] = []
        for start in range(0, len(images_bgr), self.max_batch):
            results.extend(self._detect_batch(images_bgr[start : start + self.max_batch]))
        return results

    def time_detection(
        self, images_bgr: Sequence[np.ndarray], batch_size: int, *, repeats: int = 3
    ) -> DetectionTiming:
        """Median wall time of `detect` over `images_bgr` in batches of `batch_size`."""
        if not images_bgr or batch_size < 1:
            raise ValueError("time_detection needs at least one image and batch_size ≥ 1")
        batches = [images_bgr[i : i + batch_size] for i in range(0, len(images_bgr), batch_size)]
        self._detect_batch(batches[0])  # warm-up: allocations, kernel choice
        runs_s = []
        for _ in range(repeats):
            start = time.perf_counter()
            for batch in batches:
                self._detect_batch(batch)
            runs_s.append(time.perf_counter() - start)
        total_ms = float(np.median(runs_s)) * 1000.0
        return DetectionTiming(
            batch_size=batch_size,
            frames=len(images_bgr),
            ms_per_batch=total_ms / len(batches),
            ms_per_frame=total_ms / len(images_bgr),
        )

    def _detect_batch(self, images_bgr: Sequence[np.ndarray]) -> list[Detections]:
        if not images_bgr:
            return []
        inputs, scales_xy = zip(*(self._resize(image) for image in images_bgr), strict=True)
        sizes_hw = [(int(img.shape[0]), int(img.shape[1])) for img in inputs]
        padded_h, padded_w = max(h for h, _ in sizes_hw), max(w for _, w in sizes_hw)
        batch = np.zeros((len(inputs), padded_h, padded_w, 3), np.uint8)
        for i, img in enumerate(inputs):
            batch[i, : img.shape[0], : img.shape[1]] = img
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device).float() - self._mean
            # NHWC memory seen as NCHW = channels_last, what the net is laid out for.
            # Padding holds -mean here; the net zeroes it before its first conv.
            box_offsets, logits, landmark_offsets = self.net(x.permute(0, 3, 1, 2), sizes_hw)
            scores = torch.softmax(logits, dim=-1)[..., 1]
            outputs = [t.float().cpu().numpy() for t in (box_offsets, scores, landmark_offsets)]
        priors = self._priors_for(padded_h, padded_w)
        return [
            self._faces(priors, size_hw, scale_xy, outputs[0][i], outputs[1][i], outputs[2][i])
            for i, (size_hw, scale_xy) in enumerate(zip(sizes_hw, scales_xy, strict=True))
        ]

    def _faces(
        self,
        priors: Priors,
        size_hw: tuple[int, int],
        scale_xy: tuple[float, float],
        box_offsets: np.ndarray,
        scores: np.ndarray,
        landmark_offsets: np.ndarray,
    ) -> Detections:
        inside = priors.inside(*size_hw)
        scores = np.where(inside, scores, 0.0).astype(np.float32)
        # Decode only plausible candidates; the rest cannot survive the thresholds.
        plausible = np.flatnonzero((scores > PRE_NMS_MIN_SCORE) & (scores >= self.score_threshold))
        if plausible.size == 0:
            return Detections.empty()
        boxes, landmarks = decode(
            priors, plausible, box_offsets[plausible], landmark_offsets[plausible]
        )
        keep = select_faces(
            boxes,
            scores[plausible],
            score_threshold=self.score_threshold,
            nms_threshold=self.nms_threshold,
        )
        sx, sy = scale_xy
        if (sx, sy) != (1.0, 1.0):
            boxes = boxes / np.asarray([sx, sy, sx, sy], np.float32)
            landmarks = landmarks / np.asarray([sx, sy], np.float32)
        return Detections(
            xyxy=boxes[keep].astype(np.float32),
            scores=scores[plausible][keep].astype(np.float32),
            landmarks=landmarks[keep].astype(np.float32),
        )

    def _resize(self, image: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
        """The network input for `image` and its (x, y) scale from original pixels."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"expected an (H, W, 3) uint8 BGR image, got {image.shape} {image.dtype}"
            )
        height, width = image.shape[:2]
        if self.max_side_px is None or max(height, width) <= self.max_side_px:
            return image, (1.0, 1.0)
        factor = self.max_side_px / max(height, width)
        new_w, new_h = max(1, round(width * factor)), max(1, round(height * factor))
        resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        return resized, (new_w / width, new_h / height)

    def _priors_for(self, height: int, width: int) -> Priors:
        key = (height, width)
        if key not in self._priors:
            if len(self._priors) > 64:  # many distinct sizes: keep the cache bounded
                self._priors.clear()
            self._priors[key] = Priors.for_size(height, width)
        return self._priors[key]
