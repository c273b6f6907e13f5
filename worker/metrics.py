"""Prometheus metrics of one worker, in a registry of its own (tests run several workers)."""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS_S = (0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 60)


class Metrics:
    """Every metric the worker exports on `/metrics`; names are part of the deploy contract."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.frames_decoded = Counter(
            "facestream_frames_decoded", "Frames decoded.", ["stream_id"], registry=r
        )
        self.frames_detected = Counter(
            "facestream_frames_detected",
            "Frames run through the detector.",
            ["stream_id"],
            registry=r,
        )
        self.frames_skipped = Counter(
            "facestream_frames_skipped",
            "Sampled frames not detected (reason: detector_busy, detector_error).",
            ["stream_id", "reason"],
            registry=r,
        )
        self.stream_fps = Gauge(
            "facestream_stream_fps",
            "Recent frames per second per stage (decoded, detected, skipped).",
            ["stream_id", "stage"],
            registry=r,
        )
        self.reconnects = Counter(
            "facestream_reconnects", "Source reconnects.", ["stream_id"], registry=r
        )
        self.active_tracks = Gauge(
            "facestream_active_tracks", "Tracks alive now.", ["stream_id"], registry=r
        )
        self.active_streams = Gauge(
            "facestream_active_streams", "Streams this worker runs now.", registry=r
        )
        self.windows_emitted = Counter(
            "facestream_windows_emitted",
            "Windows handed to the scheduler.",
            ["stream_id"],
            registry=r,
        )
        self.windows_skipped = Counter(
            "facestream_windows_skipped",
            "Windows not emitted (too little face coverage).",
            ["stream_id"],
            registry=r,
        )
        self.windows_dropped = Counter(
            "facestream_windows_dropped",
            "Windows dropped (reason: superseded, queue_full, stale, stream_stopped, "
            "model_error, shutdown).",
            ["reason"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "facestream_queue_depth", "Items waiting per queue.", ["queue"], registry=r
        )
        self.detector_batch_size = Histogram(
            "facestream_detector_batch_size",
            "Frames per detector batch.",
            buckets=(1, 2, 4, 8, 16, 32),
            registry=r,
        )
        self.model_batch_size = Histogram(
            "facestream_model_batch_size",
            "Windows per model batch.",
            buckets=(1, 2, 4, 8, 16, 32),
            registry=r,
        )
        self.frame_to_event_s = Histogram(
            "facestream_frame_to_event_seconds",
            "Wall time from a window's newest frame to its event.",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.events = Counter(
            "facestream_events", "Events handed to the publisher.", ["task"], registry=r
        )
        self.redis_errors = Gauge(
            "facestream_redis_errors",
            "Redis errors seen by the publisher (cumulative).",
            registry=r,
        )
        self.redis_buffer_size = Gauge(
            "facestream_redis_buffer_size", "Events waiting for Redis.", registry=r
        )
        self.redis_buffer_high_water = Gauge(
            "facestream_redis_buffer_high_water",
            "Most events ever waiting for Redis at once.",
            registry=r,
        )
        self.events_dropped = Gauge(
            "facestream_events_dropped",
            "Events dropped because Redis stayed down (cumulative).",
            registry=r,
        )
        self.assigned_partitions = Gauge(
            "facestream_assigned_partitions",
            "Kafka partitions assigned to this worker.",
            registry=r,
        )
        self.rebalances = Counter(
            "facestream_rebalances", "Kafka group rebalances seen.", registry=r
        )
        self.invalid_specs = Counter(
            "facestream_invalid_specs", "Assignment records sent to the DLQ.", registry=r
        )

    def forget_stream(self, stream_id: str) -> None:
        """Drop a stopped stream's labelled series so dashboards do not show ghosts."""
        for metric in (
            self.frames_decoded,
            self.frames_detected,
            self.reconnects,
            self.active_tracks,
            self.windows_emitted,
            self.windows_skipped,
        ):
            with contextlib.suppress(KeyError):
                metric.remove(stream_id)
        for labelled in (self.frames_skipped, self.stream_fps):
            for labels in list(labelled._metrics):
                if labels[0] == stream_id:
                    labelled.remove(*labels)
