"""Prometheus metrics of one worker, in a registry of its own (tests run several workers).

Two kinds. Histograms and the few counters of events that happen in one place are
observed where they happen (`Metrics` attributes). Everything the stages already count
(sources, pipelines, the window queue, the publisher, the Kafka watcher) is read when
`/metrics` is scraped by `StageCollector`: no copies, no mirror thread, and a stopped
stream's series are simply gone. Names are part of the deploy contract.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from worker.admission import Admission
    from worker.intake import StreamTable
    from worker.publisher import EventPublisher
    from worker.scheduler import WindowQueue
    from worker.watcher import WatcherStatus

LATENCY_BUCKETS_S = (0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32)

# (name, help, how to read it from a running StreamRecord) for per-stream counters.
_STREAM_COUNTERS: tuple[tuple[str, str, Callable], ...] = (
    ("facestream_frames_decoded", "Frames decoded.", lambda r: r.source.stats.frames_decoded),
    (
        "facestream_frames_sampled",
        "Decoded frames kept at the detection rate.",
        lambda r: r.source.stats.frames_sampled,
    ),
    ("facestream_frames_detected", "Frames run through the detector.", lambda r: r.detected),
    (
        "facestream_decode_errors",
        "Packets FFmpeg could not decode.",
        lambda r: r.source.stats.decode_errors,
    ),
    ("facestream_stalls", "Times a live source stalled.", lambda r: r.source.stats.stalls),
    ("facestream_reconnects", "Source reconnects.", lambda r: r.source.stats.reconnects),
    (
        "facestream_windows_emitted",
        "Windows handed to the scheduler.",
        lambda r: r.pipeline.stats.emitted,
    ),
    (
        "facestream_windows_skipped",
        "Windows not emitted (too little face coverage).",
        lambda r: r.pipeline.stats.skipped_low_coverage,
    ),
    (
        "facestream_faces_too_small",
        "Detected faces below the minimum size, not windowed.",
        lambda r: r.pipeline.stats.faces_too_small,
    ),
    (
        "facestream_faces_over_max",
        "Tracked faces beyond the per-stream maximum, not windowed.",
        lambda r: r.pipeline.stats.faces_over_max,
    ),
    (
        "facestream_crops_evicted",
        "Face crops dropped from a window's bounded buffer.",
        lambda r: r.pipeline.stats.crops_evicted,
    ),
)


# (name, help, how to read it from the admission's LoadFigures; None = not exported now).
_LOAD_GAUGES: tuple[tuple[str, str, Callable], ...] = (
    (
        "facestream_degraded_streams",
        "Streams shed from detection because the detector is at capacity.",
        lambda f: f.degraded_streams,
    ),
    (
        "facestream_detector_demand_fps",
        "Frames per second the running streams ask of the detector (admitted or not).",
        lambda f: f.demand_fps,
    ),
    (
        "facestream_detector_capacity_fps",
        "Frames per second the detector achieves when busy (measured).",
        lambda f: f.capacity_fps,
    ),
    (
        "facestream_detector_load",
        "Detector demand ÷ measured capacity (above scheduler.max_detector_load, the "
        "newest streams are shed; above 1, more than one worker's worth).",
        lambda f: f.load,
    ),
)

_Family = type[CounterMetricFamily] | type[GaugeMetricFamily]

# (family, name, help, how to read it from PublisherStats).
_PUBLISHER_FIGURES: tuple[tuple[_Family, str, str, Callable], ...] = (
    (
        GaugeMetricFamily,
        "facestream_redis_errors",
        "Redis errors seen by the publisher (cumulative).",
        lambda s: s.redis_errors,
    ),
    (
        GaugeMetricFamily,
        "facestream_redis_buffer_size",
        "Events waiting for Redis.",
        lambda s: s.buffered,
    ),
    (
        GaugeMetricFamily,
        "facestream_redis_buffer_high_water",
        "Most events ever waiting for Redis at once.",
        lambda s: s.buffered_high_water,
    ),
    (
        GaugeMetricFamily,
        "facestream_events_dropped",
        "Events dropped because Redis stayed down (cumulative).",
        lambda s: s.dropped,
    ),
    (
        CounterMetricFamily,
        "facestream_events_published",
        "Events written to Redis (new ids).",
        lambda s: s.published,
    ),
    (
        CounterMetricFamily,
        "facestream_events_deduplicated",
        "Events not written because their id was already published (a replay).",
        lambda s: s.duplicates_suppressed,
    ),
    (
        CounterMetricFamily,
        "facestream_answers_truncated",
        "Answers cut at the token cap (events with stop_reason=length).",
        lambda s: s.answers_truncated,
    ),
)

# (family, name, help, how to read it from KafkaMirrorStats), when events go to Kafka too.
_KAFKA_FIGURES: tuple[tuple[_Family, str, str, Callable], ...] = (
    (
        CounterMetricFamily,
        "facestream_kafka_events_sent",
        "Events acknowledged by the Kafka events topic.",
        lambda k: k.sent,
    ),
    (
        CounterMetricFamily,
        "facestream_kafka_events_dropped",
        "Events dropped from the Kafka events buffer (full while Kafka was down).",
        lambda k: k.dropped,
    ),
    (
        CounterMetricFamily,
        "facestream_kafka_events_errors",
        "Failed sends to the Kafka events topic (each retried).",
        lambda k: k.errors,
    ),
    (
        GaugeMetricFamily,
        "facestream_kafka_events_buffer_size",
        "Events waiting for the Kafka events topic.",
        lambda k: k.buffered,
    ),
    (
        GaugeMetricFamily,
        "facestream_kafka_events_buffer_bytes",
        "Bytes of event JSON waiting for the Kafka events topic.",
        lambda k: k.buffered_bytes,
    ),
)


class Metrics:
    """The metrics observed where things happen; `collect_stages` adds the rest."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry

        def histogram(name: str, text: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, text, buckets=buckets, registry=r)

        self.detector_batch_size = histogram(
            "facestream_detector_batch_size", "Frames per detector batch.", BATCH_BUCKETS
        )
        self.model_batch_size = histogram(
            "facestream_model_batch_size",
            "Windows taken from the queue to join the engine at one step.",
            BATCH_BUCKETS,
        )
        self.frame_to_event_s = histogram(
            "facestream_frame_to_event_seconds",
            "Wall time from a window's newest frame to its event.",
            LATENCY_BUCKETS_S,
        )
        self.events = Counter(
            "facestream_events", "Events handed to the publisher.", ["task"], registry=r
        )

    def collect_stages(
        self,
        streams: StreamTable,
        queue: WindowQueue,
        publisher: EventPublisher,
        watcher_status: Callable[[], WatcherStatus],
        admission: Admission | None = None,
    ) -> None:
        """Export the stages' own counters at every scrape (call once); without `admission`
        (no detector) the load figures are not exported."""
        self.registry.register(StageCollector(streams, queue, publisher, watcher_status, admission))


@dataclass(eq=False)  # hashed by identity: the registry keys its collectors
class StageCollector(Collector):
    """Reads the running stages' counters when `/metrics` is scraped; without `admission`
    (no detector) the load figures are not exported."""

    streams: StreamTable
    queue: WindowQueue
    publisher: EventPublisher
    watcher_status: Callable[[], WatcherStatus]
    admission: Admission | None = None

    def describe(self) -> list[Metric]:
        """Nothing up front: the registry then never collects at registration time."""
        return []

    def collect(self) -> Iterator[Metric]:
        """One family per metric, built from the stages' counters now."""
        yield from self._per_stream()
        yield from self._queues()
        yield from self._load()
        yield from self._publisher_and_kafka()

    def _per_stream(self) -> Iterator[Metric]:
        records = [r for r in self.streams.active() if r.source and r.pipeline]
        for name, text, read in _STREAM_COUNTERS:
            family = CounterMetricFamily(name, text, labels=["stream_id"])
            for record in records:
                family.add_metric([record.stream_id], read(record))
            yield family
        skipped = CounterMetricFamily(
            "facestream_frames_skipped",
            "Sampled frames not detected (reason: detector_busy = the source dropped its "
            "oldest waiting frame, detector_error).",
            labels=["stream_id", "reason"],
        )
        fps = GaugeMetricFamily(
            "facestream_stream_fps",
            "Recent frames per second per stage (decoded, detected, skipped).",
            labels=["stream_id", "stage"],
        )
        tracks = GaugeMetricFamily(
            "facestream_active_tracks", "Tracks alive now.", labels=["stream_id"]
        )
        for record in records:
            skipped.add_metric(
                [record.stream_id, "detector_busy"], record.source.stats.frames_dropped
            )
            skipped.add_metric([record.stream_id, "detector_error"], record.detector_errors)
            for stage, value in record.fps.items():
                fps.add_metric([record.stream_id, stage], value)
            tracks.add_metric([record.stream_id], len(record.pipeline.tracker.active_track_ids))
        yield from (skipped, fps, tracks)
        yield GaugeMetricFamily(
            "facestream_active_streams", "Streams this worker runs now.", value=len(records)
        )

    def _queues(self) -> Iterator[Metric]:
        records = self.streams.active()
        sources = [r.source for r in records if r.source]
        for name, text, windows, frames in (
            (
                "facestream_queue_depth",
                "Items waiting per queue.",
                len(self.queue),
                sum(source.waiting for source in sources),
            ),
            (
                "facestream_queue_bytes",
                "Bytes of pixels waiting per queue (frames: decoded frames of every stream; "
                "windows: face crops for the model).",
                self.queue.nbytes,
                sum(source.waiting_bytes for source in sources),
            ),
        ):
            family = GaugeMetricFamily(name, text, labels=["queue"])
            family.add_metric(["windows"], windows)
            family.add_metric(["frames"], frames)
            yield family
        dropped = CounterMetricFamily(
            "facestream_windows_dropped",
            "Windows dropped (reason: superseded, queue_full, stale, stream_stopped, "
            "model_error, shutdown).",
            labels=["reason"],
        )
        for reason, count in self.queue.drops.items():
            dropped.add_metric([reason], count)
        yield dropped

    def _load(self) -> Iterator[Metric]:
        if self.admission is None:
            return
        figures = self.admission.figures()
        for name, text, read in _LOAD_GAUGES:
            value = read(figures)
            if value is not None:  # capacity not measured yet: no figure, not a made-up one
                yield GaugeMetricFamily(name, text, value=value)

    def _publisher_and_kafka(self) -> Iterator[Metric]:
        stats = self.publisher.stats()
        for family, name, text, read in _PUBLISHER_FIGURES:
            yield family(name, text, value=read(stats))
        if stats.kafka is not None:
            for family, name, text, read in _KAFKA_FIGURES:
                yield family(name, text, value=read(stats.kafka))
        status = self.watcher_status()
        yield GaugeMetricFamily(
            "facestream_assigned_partitions",
            "Kafka partitions assigned to this worker.",
            value=len(status.partitions),
        )
        yield CounterMetricFamily(
            "facestream_rebalances",
            "Kafka group assignments that changed this worker's partitions.",
            value=status.rebalances,
        )
        yield CounterMetricFamily(
            "facestream_invalid_specs",
            "Invalid assignment records, each counted once (the first time it is read; "
            "these go to the DLQ).",
            value=status.invalid_records,
        )
