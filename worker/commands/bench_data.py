"""What the ingest and worker benchmarks read by default: the project's test data
(`FACESTREAM_TESTDATA`, else `shared/testdata` beside the checkout), its Hamilton clip and
its RetinaFace MobileNet-0.25 weights, with the `--video` and `--weights` options."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parents[2]


def testdata_dir() -> Path:
    """`$FACESTREAM_TESTDATA`, else `shared/testdata` beside the checkout."""
    return Path(os.environ.get("FACESTREAM_TESTDATA", _REPO_ROOT.parent / "shared" / "testdata"))


def add_video_and_weights_arguments(parser: argparse.ArgumentParser, video_help: str) -> None:
    """`--video PATH` and `--weights PATH|REPO:FILE` (defaults: `default_video`,
    `detector_weights`)."""
    parser.add_argument("--video", type=Path, default=None, metavar="PATH", help=video_help)
    parser.add_argument(
        "--weights",
        default=None,
        metavar="PATH|REPO:FILE",
        help="RetinaFace weights (default: the test data's MobileNet-0.25, else the setting).",
    )


def video_or_default(video: Path | None) -> Path:
    """`video`, else the Hamilton test clip."""
    return video or testdata_dir() / "videos" / "short_hamilton_clip.mp4"


def detector_weights(weights: str | None, setting: str) -> str:
    """`weights`, else the test data's MobileNet-0.25 when present, else `setting`."""
    if weights is not None:
        return weights
    local = testdata_dir() / "weights" / "retinaface_mobilenet0.25_Final.pth"
    return str(local) if local.is_file() else setting
