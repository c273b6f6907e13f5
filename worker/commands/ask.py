"""`facestream ask SOURCE --task ...`: one question to Face-LLaVA about one face.

SOURCE is a face crop image (png/jpg) or a pre-cropped face clip (mp4 or any video PyAV
reads: 8 frames are taken at `floor(linspace(0, n-1, 8))` over all its frames, as the
authors do; one decode pass counts the n frames, a second keeps only the 8). Prints one
the answer as text (and the structured result the answer parser finds in it); `--json`
prints one JSON object with the question, answer, token ids, stop reason and result.

It wants a face crop (or a clip of face crops), not a full frame: when the detector
weights are on this machine already, ask runs RetinaFace on the image (a clip: its middle
sampled frame) and warns when it finds several faces, none, or one that fills less than
a fifth of the picture. Without local weights this hint is skipped (nothing is fetched).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from worker.commands.facellava_common import add_model_arguments

TASKS = ("emotion", "age", "attributes", "action_units")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
CROP_MIN_FACE_AREA = 0.2
"""A face crop's face covers at least this fraction of it (the authors' crops: 0.6-0.9)."""


class SourceReadError(RuntimeError):
    """SOURCE could not be read as an image or a video."""


HELP = "Ask Face-LLaVA about one face image or pre-cropped face clip."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `ask`."""
    parser.add_argument("source", help="Face image (png/jpg) or pre-cropped face clip (mp4).")
    parser.add_argument("--task", choices=TASKS, required=True, help="What to ask.")
    parser.add_argument(
        "--question", default=None, help="Own question (default: the task's default question)."
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="Print one JSON object (question, answer, token ids, stop reason, result, ...).",
    )
    add_model_arguments(parser)


def face_crop_hint(visual_rgb, weights: str, cache_dir: str | None) -> str | None:
    """Why the picture does not look like one face crop (see the module doc), or None when
    it does or the detector weights are not here."""
    import numpy as np

    from models.retinaface import RetinaFaceDetector
    from models.retinaface_options import DetectorOptions
    from models.weights import cached_weights

    path = cached_weights(weights, cache_dir)
    if path is None:
        return None
    detector = RetinaFaceDetector.from_options(DetectorOptions(weights=str(path), device="cpu"))
    image_bgr = np.ascontiguousarray(visual_rgb[..., ::-1])
    boxes = detector.detect([image_bgr])[0].xyxy
    if len(boxes) == 0:
        return "the detector finds no face in it"
    if len(boxes) > 1:
        return f"the detector finds {len(boxes)} faces in it"
    height, width = image_bgr.shape[:2]
    share = float((boxes[0, 2] - boxes[0, 0]) * (boxes[0, 3] - boxes[0, 1])) / (height * width)
    if share < CROP_MIN_FACE_AREA:
        return f"its one face covers {share:.0%} of the picture"
    return None


def read_image_rgb(path: Path):
    """An image file as (H, W, 3) uint8 RGB."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, UnidentifiedImageError) as exc:
        raise SourceReadError(f"cannot read image {path}: {exc}") from exc


def count_clip_frames(path: Path) -> int:
    """How many frames decoding the video gives: a decode pass that keeps no frame.

    The container's frame count is not used: it is missing or inexact for many files,
    and the sampled indices must be those of the frames decoding gives.
    """
    import av

    try:
        with av.open(str(path)) as container:
            count = sum(1 for _ in container.decode(container.streams.video[0]))
    except (av.FFmpegError, IndexError) as exc:
        raise SourceReadError(f"cannot decode video {path}: {exc}") from exc
    if count == 0:
        raise SourceReadError(f"video {path} has no frames")
    return count


def read_clip_rgb(path: Path, indices: list[int]):
    """The frames at `indices` (ascending, repeats allowed) as (T, H, W, 3) uint8 RGB.

    Only those frames are converted and kept, so a long clip needs memory for
    len(indices) frames, not for all of them.
    """
    import av
    import numpy as np

    wanted: dict[int, int] = {}
    for index in indices:
        wanted[index] = wanted.get(index, 0) + 1
    frames = []
    try:
        with av.open(str(path)) as container:
            for number, frame in enumerate(container.decode(container.streams.video[0])):
                if number in wanted:
                    frames.extend([frame.to_ndarray(format="rgb24")] * wanted[number])
                    if len(frames) == len(indices):
                        break
    except (av.FFmpegError, IndexError) as exc:
        raise SourceReadError(f"cannot decode video {path}: {exc}") from exc
    if len(frames) != len(indices):
        raise SourceReadError(f"video {path} ended before frame {max(indices)}")
    return np.stack(frames)


def run(args: argparse.Namespace) -> int:
    """Load the model, ask, print the JSON answer; returns the exit status."""
    import structlog

    from models.facellava.answers import Task, parse_answer
    from models.facellava.checkpoint import CheckpointError
    from models.facellava.engine import GenerationEngine, GenerationRequest, Question
    from models.facellava.modeling import FaceLlavaConfigError
    from models.facellava.preprocess import sample_frame_indices
    from models.facellava.prompts import (
        DEFAULT_QUESTIONS,
        TASK_MODALITY,
        PromptError,
        TokenizerNotFoundError,
        prompt_suffix,
    )
    from worker.commands.facellava_common import load_for_cli
    from worker.logs import configure_logging

    configure_logging(args.log_format, args.log_level)
    log = structlog.get_logger(__name__)
    source = Path(args.source)
    if not source.is_file():
        print(f"facestream ask: no such file: {source}", file=sys.stderr)
        return 2
    task = Task(args.task)
    try:
        is_image = source.suffix.lower() in IMAGE_SUFFIXES
        # A clip is only counted here (a bad one fails before the slow load); its
        # sampled frames are decoded once the model says how many it takes.
        visual = read_image_rgb(source) if is_image else None
        frame_count = None if is_image else count_clip_frames(source)
    except SourceReadError as exc:
        print(f"facestream ask: {exc}", file=sys.stderr)
        return 2
    modality = "image" if is_image else "video"
    if modality != TASK_MODALITY[task]:
        log.warning(
            "task asked of the other modality than the authors recommend",
            task=task.value,
            given=modality,
            recommended=TASK_MODALITY[task],
        )

    question = Question(args.question or DEFAULT_QUESTIONS[task], task)
    try:
        prompt_suffix(question.text)  # a bad --question fails before the slow load
        loaded, options, device = load_for_cli(args)
    except (PromptError, CheckpointError, TokenizerNotFoundError, FaceLlavaConfigError) as exc:
        print(f"facestream ask: {exc}", file=sys.stderr)
        return 2
    engine = GenerationEngine(
        loaded.model,
        loaded.tokenizer,
        max_new_tokens=options.max_new_tokens,
        max_visuals=1,  # one question: no need for auto-sized KV slots
        eos_token_id=loaded.eos_token_id,
    )
    if visual is None:
        indices = sample_frame_indices(frame_count, engine.num_frames)
        try:
            visual = read_clip_rgb(source, indices)
        except SourceReadError as exc:
            print(f"facestream ask: {exc}", file=sys.stderr)
            return 2
    from worker.settings import Settings

    detector_options = Settings().detector
    middle = visual if visual.ndim == 3 else visual[len(visual) // 2]
    hint = face_crop_hint(middle, detector_options.weights, detector_options.cache_dir)
    if hint is not None:
        log.warning(
            f"this does not look like a face crop: {hint}; the answer is about whatever "
            "the model makes of the whole picture (crop one face first, e.g. with "
            "`facestream analyze --save-clips`)"
        )
    (result,) = engine.generate([GenerationRequest(str(source), visual, (question,))])
    answer = result.answers[0]
    parsed = parse_answer(task, answer.text)
    output = {
        "source": str(source),
        "task": task.value,
        "modality": modality,
        "frames_in_source": frame_count,
        "question": question.text,
        "answer": answer.text,
        "token_ids": list(answer.token_ids),
        "stop_reason": answer.stop_reason,
        "result": parsed.model_dump() if parsed is not None else None,
        "model": options.model,
        "device": device,
        "dtype": options.dtype,
    }
    if args.json:
        print(json.dumps(output, ensure_ascii=False))
        return 0
    print(answer.text)
    found = json.dumps(output["result"]) if parsed is not None else "none (the parser found none)"
    print(f"result: {found}")
    return 0
