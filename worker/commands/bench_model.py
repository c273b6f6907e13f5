"""`facestream bench model`: Face-LLaVA throughput, batched engine vs one request at a time.

Two workloads per batch size B: `emotion` (B clips, one question each) and `4 tasks`
(B faces: emotion on the clip + age, attributes and action units on an image). Each is
run through `GenerationEngine` (batched tower, shared prefix prefill, batched decode) and,
in the same run, as the authors' loop does it (`greedy_generate`: one visual and one
question per call). Clips/s counts faces; tokens/s counts generated tokens.

With `--arrival-rate R` it runs the continuous engine instead: `--requests N` face
windows arrive over time (Poisson, R per second; 0 = all at once), each is submitted
when it arrives and joins the running decode batch at the next step; it prints clips/s,
p50/p95 latency per request (arrival to answer) and peak memory.

`--config 7b` builds the real shapes (Vicuna-7B + ViT-L/14 towers at 224 px, 8 frames)
with random weights, for GPU machines; `--config tiny` uses the test fixture's sizes,
with the fixture's weights or random ones. Random weights ignore `</s>` and always make
`--max-new-tokens` tokens, so timings compare like with like.
"""

from __future__ import annotations

import argparse
import sys
import time

from worker.commands.bench_shapes import (
    fixture_checkpoint,
    print_roofline,
    random_model,
    shape_config,
)
from worker.commands.facellava_common import add_model_arguments

CROP_PX = 256
"""The authors' face-crop size: synthetic inputs have it, as real crops do."""


HELP = "Face-LLaVA throughput: batched engine vs one request at a time."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `bench model`."""
    parser.add_argument("--config", choices=("tiny", "7b"), default="tiny")
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="Random weights (always for 7b unless --model is given); EOS is ignored.",
    )
    parser.add_argument("--batch-sizes", default="1,2,4,8", help="Comma-separated list.")
    parser.add_argument(
        "--tokenizer",
        default=None,
        help="Folder with tokenizer.model for random weights (default: --model, else the "
        "tiny fixture's checkpoint under FACESTREAM_TESTDATA).",
    )
    parser.add_argument(
        "--no-single", action="store_true", help="Skip the one-request-at-a-time baseline."
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="Time each cell this many times; keep the fastest (a new batch size's first run "
        "is cold: allocator growth on the GPU).",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU: torch intra-op threads (default: torch's)."
    )
    parser.add_argument(
        "--arrival-rate",
        type=float,
        default=None,
        help="Run the continuous engine with windows arriving at this rate per second "
        "(Poisson; 0 = all at once) instead of the batch table.",
    )
    parser.add_argument("--requests", type=int, default=32, help="Windows in an arrival run.")
    parser.add_argument(
        "--workload",
        choices=("emotion", "4 tasks"),
        default="emotion",
        help="Arrival run: emotion on a clip, or also age/attributes/AUs on an image.",
    )
    parser.add_argument(
        "--max-visuals",
        default="auto",
        help="Arrival run: KV slots per modality (an integer, or auto: sized from free memory).",
    )
    parser.add_argument(
        "--cuda-graphs", action="store_true", help="Arrival run: decode step as CUDA graphs."
    )
    add_model_arguments(
        parser,
        model_help="Checkpoint to load (default for tiny: the fixture checkpoint; "
        "7b: random weights).",
    )


# ---------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _workloads(batch: int, rng, num_frames: int) -> dict[str, list]:
    """Per workload, the engine requests for `batch` synthetic faces."""
    from models.facellava.answers import Task
    from models.facellava.engine import GenerationRequest

    clips = [
        rng.integers(0, 256, (num_frames, CROP_PX, CROP_PX, 3), dtype="uint8") for _ in range(batch)
    ]
    images = [rng.integers(0, 256, (CROP_PX, CROP_PX, 3), dtype="uint8") for _ in range(batch)]
    emotion = [
        GenerationRequest.for_tasks(f"c{i}", clip, [Task.EMOTION]) for i, clip in enumerate(clips)
    ]
    image_tasks = [Task.AGE, Task.ATTRIBUTES, Task.ACTION_UNITS]
    four = emotion + [
        GenerationRequest.for_tasks(f"i{i}", image, image_tasks) for i, image in enumerate(images)
    ]
    return {"emotion": emotion, "4 tasks": four}


def _time_engine(engine, requests, device: str) -> tuple[float, int]:
    before = engine.counters.tokens_generated
    _sync(device)
    start = time.perf_counter()
    engine.generate(requests)
    _sync(device)
    return time.perf_counter() - start, engine.counters.tokens_generated - before


def _time_single(model, tokenizer, requests, device: str, **kwargs) -> tuple[float, int]:
    from models.facellava.engine import greedy_generate

    tokens = 0
    _sync(device)
    start = time.perf_counter()
    for request in requests:
        for question in request.questions:
            answer = greedy_generate(model, tokenizer, request.visual, question.text, **kwargs)
            tokens += len(answer.token_ids)
    _sync(device)
    return time.perf_counter() - start, tokens


def run(args: argparse.Namespace) -> int:
    """Build or load the model, run both workloads at every batch size, print the table."""
    import numpy as np
    import torch

    from models.facellava.engine import GenerationEngine
    from models.facellava.prompts import PromptTokenizer
    from models.overrides import with_overrides
    from worker.commands.facellava_common import (
        load_for_cli,
        model_options,
        resolve_device,
        resolve_dtype,
    )
    from worker.logs import configure_logging

    configure_logging(args.log_format, args.log_level)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        batch_sizes = sorted({int(b) for b in args.batch_sizes.split(",") if b.strip()})
    except ValueError:
        print(f"--batch-sizes must be integers, got {args.batch_sizes!r}", file=sys.stderr)
        return 2
    if not batch_sizes or min(batch_sizes) < 1:
        print("--batch-sizes needs positive integers", file=sys.stderr)
        return 2
    options = model_options(args)
    device = resolve_device(options.device)
    if args.config == "7b" and device == "cpu":
        print(
            "bench model --config 7b needs a CUDA device; use --config tiny on CPU", file=sys.stderr
        )
        return 2
    random_weights = args.random_weights or (args.config == "7b" and args.model is None)
    if args.config == "tiny" and args.model is None:
        args.model = str(fixture_checkpoint())
    if not random_weights:
        loaded, options, device = load_for_cli(args)
        model, tokenizer, eos = loaded.model, loaded.tokenizer, loaded.eos_token_id
        weights = f"checkpoint {options.model}"
    else:
        dtype = resolve_dtype(args, options, device)
        options = with_overrides(options, {"dtype": dtype})
        tokenizer_dir = args.tokenizer or args.model or str(fixture_checkpoint())
        tokenizer = PromptTokenizer(tokenizer_dir)
        model = random_model(
            shape_config(args.config), dtype, device, options.attn_implementation, args.seed
        )
        eos = tokenizer.eos_id
        weights = f"random (seed {args.seed}), tokenizer {tokenizer.path}"
    torch.manual_seed(args.seed)
    new_tokens = options.max_new_tokens
    if args.arrival_rate is not None:
        return _run_arrivals(args, model, tokenizer, eos, random_weights, weights, options, device)
    engine = GenerationEngine(
        model,
        tokenizer,
        max_new_tokens=new_tokens,
        max_batch_clips=max(batch_sizes),
        max_visuals=max(batch_sizes),
        ignore_eos=random_weights,
        eos_token_id=eos,
    )
    single_kwargs = {
        "max_new_tokens": new_tokens,
        "ignore_eos": random_weights,
        "eos_token_id": eos,
    }
    num_frames = model.config.video_tower.num_frames
    rng = np.random.default_rng(args.seed)

    print(f"# facestream bench model: config {args.config}, weights {weights}")
    print(
        f"# device {device} ({_device_name(device)}), dtype {options.dtype}, "
        f"attention {model.attn_implementation}, max_new_tokens {new_tokens}, "
        f"fastest of {max(1, args.repeats)} run(s) per cell"
    )
    if random_weights:
        print(f"# random weights: EOS ignored, every answer is exactly {new_tokens} tokens")
    else:
        print("# real weights: answers stop at </s> (token counts may differ per answer)")
    # Warm-up: kernels, allocator, lazy buffers.
    warm = _workloads(1, rng, num_frames)["4 tasks"]
    engine.generate(warm)
    if not args.no_single:
        _time_single(model, tokenizer, warm[:1], device, **single_kwargs)

    header = (
        f"{'workload':<9} {'batch':>5} | {'engine s':>9} {'clips/s':>8} {'tok/s':>9} | "
        f"{'single s':>9} {'clips/s':>8} {'tok/s':>9} | {'speedup':>7}"
    )
    print(header)
    print("-" * len(header))
    emotion_rates: dict[int, float] = {}
    for workload in ("emotion", "4 tasks"):
        for batch in batch_sizes:
            requests = _workloads(batch, rng, num_frames)[workload]
            engine_s, engine_tokens = min(
                _time_engine(engine, requests, device) for _ in range(max(1, args.repeats))
            )
            line = (
                f"{workload:<9} {batch:>5} | {engine_s:>9.3f} {batch / engine_s:>8.2f} "
                f"{engine_tokens / engine_s:>9.1f} | "
            )
            if workload == "emotion":
                emotion_rates[batch] = batch / engine_s
            if args.no_single:
                line += f"{'-':>9} {'-':>8} {'-':>9} | {'-':>7}"
            else:
                single_s, single_tokens = min(
                    _time_single(model, tokenizer, requests, device, **single_kwargs)
                    for _ in range(max(1, args.repeats))
                )
                line += (
                    f"{single_s:>9.3f} {batch / single_s:>8.2f} {single_tokens / single_s:>9.1f}"
                    f" | {single_s / engine_s:>6.2f}x"
                )
            print(line, flush=True)
    counters = engine.counters
    print(
        f"# engine totals: {counters.requests} requests, {counters.questions} questions, "
        f"{counters.prefill_tokens} prefill tokens, {counters.tokens_generated} generated tokens"
    )
    if device.startswith("cuda"):
        print_roofline(model, tokenizer, emotion_rates)
    return 0


def _run_arrivals(
    args: argparse.Namespace,
    model,
    tokenizer,
    eos: int,
    random_weights: bool,
    weights: str,
    options,
    device: str,
) -> int:
    """Windows arrive over time and join the running engine; latency and rate figures."""
    import resource
    from collections import deque

    import numpy as np
    import torch

    from models.facellava.batch_limits import resolve_batch_clips
    from models.facellava.engine import GenerationEngine

    if args.requests < 1 or args.arrival_rate < 0:
        print("--requests must be >= 1 and --arrival-rate >= 0", file=sys.stderr)
        return 2
    try:
        max_visuals = "auto" if args.max_visuals == "auto" else int(args.max_visuals)
    except ValueError:
        print(
            f"--max-visuals must be an integer or auto, got {args.max_visuals!r}", file=sys.stderr
        )
        return 2
    engine = GenerationEngine(
        model,
        tokenizer,
        max_new_tokens=options.max_new_tokens,
        max_batch_clips=resolve_batch_clips(options.max_batch_clips, model),
        max_visuals=max_visuals,
        memory_fraction=options.kv_memory_fraction,
        ignore_eos=random_weights,
        eos_token_id=eos,
        cuda_graphs=args.cuda_graphs,
    )
    rng = np.random.default_rng(args.seed)
    num_frames = model.config.video_tower.num_frames
    faces = _workloads(args.requests, rng, num_frames)
    requests = faces[args.workload]
    # A face's clip and image requests arrive together.
    gaps = (
        rng.exponential(1 / args.arrival_rate, args.requests)
        if args.arrival_rate > 0
        else np.zeros(args.requests)
    )
    offsets = np.cumsum(gaps) - gaps[0]
    arrival_of = {r.key: float(offsets[int(str(r.key)[1:])]) for r in requests}
    engine.generate(_workloads(1, rng, num_frames)["4 tasks"])  # warm-up
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    queue = deque(sorted(requests, key=lambda r: arrival_of[r.key]))
    latencies: list[float] = []
    active_rows: list[int] = []
    _sync(device)
    start = time.perf_counter()
    while queue or not engine.idle:
        now = time.perf_counter() - start
        while queue and arrival_of[queue[0].key] <= now and engine.pending < engine.max_pending:
            engine.submit(queue.popleft())
        if engine.idle:
            time.sleep(max(0.0, min(0.01, arrival_of[queue[0].key] - now)))
            continue
        finished = engine.step()
        done_s = time.perf_counter() - start
        active_rows.append(engine.active)
        latencies.extend(done_s - arrival_of[result.key] for result in finished)
    _sync(device)
    wall_s = time.perf_counter() - start
    counters = engine.counters
    kv_bytes = sum(pool.nbytes for pool in engine.pools.values())
    if device.startswith("cuda"):
        peak = f"peak CUDA memory allocated {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
    else:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        peak = f"peak process RSS {rss:.2f} GiB (whole process, since start)"
    p50, p95 = np.percentile(latencies, [50, 95])
    print(f"# facestream bench model (arrivals): config {args.config}, weights {weights}")
    print(
        f"# device {device} ({_device_name(device)}), dtype {options.dtype}, "
        f"max_new_tokens {options.max_new_tokens}, workload {args.workload}, "
        f"{args.requests} faces at {args.arrival_rate:g}/s (Poisson, seed {args.seed})"
    )
    budget = engine.slot_budget
    sizing = (
        f"auto ({budget.usable_bytes / 2**30:.2f} GiB usable)" if budget is not None else "fixed"
    )
    print(
        f"# KV slots: {engine.max_visuals} per modality ({sizing}), "
        f"{kv_bytes / 2**20:.1f} MiB preallocated; cuda graphs {args.cuda_graphs}"
    )
    print(
        f"faces {args.requests}  wall {wall_s:.3f} s  clips/s {args.requests / wall_s:.2f}  "
        f"tokens/s {counters.tokens_generated / wall_s:.1f}"
    )
    print(
        f"latency per request (arrival -> answer): p50 {p50 * 1000:.0f} ms  "
        f"p95 {p95 * 1000:.0f} ms  max {max(latencies) * 1000:.0f} ms"
    )
    print(
        f"decode steps {counters.decode_steps}  mean active rows "
        f"{float(np.mean(active_rows)) if active_rows else 0:.1f}  {peak}"
    )
    return 0


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"{torch.get_num_threads()} CPU threads"
