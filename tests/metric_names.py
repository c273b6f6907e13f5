"""What the worker's `/metrics` can expose, read from `worker.metrics` (for manifest and
dashboard checks): the metrics observed in place and the families the scrape-time stage
collector builds, collected here over empty stages so every family is there."""

from __future__ import annotations

from prometheus_client.metrics_core import Metric

from worker.admission import MIN_FRAMES_MEASURED, Admission
from worker.intake import StreamTable
from worker.metrics import Metrics
from worker.publisher import EventPublisher
from worker.scheduler import WindowQueue
from worker.settings import RedisSettings
from worker.watcher import WatcherState, WatcherStatus


def exported_families() -> list[Metric]:
    """Every metric family of a worker's registry (no samples needed)."""
    admission = Admission(0.9)  # with a measured capacity, so the load figures are there
    admission.observe(MIN_FRAMES_MEASURED, 0.5)
    admission.update([], force=True)
    metrics = Metrics()
    metrics.collect_stages(
        StreamTable(),
        WindowQueue(capacity=1, max_age_s=1.0),
        EventPublisher(RedisSettings()),  # not started: nothing connects
        lambda: WatcherStatus(WatcherState.CONNECTING, (), (), 0, 0, 0, 0, 0, 0, 0, None),
        admission,
    )
    return list(metrics.registry.collect())
