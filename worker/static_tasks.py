"""Which tasks a face window asks: static ones (age, attributes) once per person.

A person's age and facial attributes do not change between two 2-second windows, so
asking them every window spends the GPU on answers already known. `StaticTaskPolicy`
decides per (stream, track) and window: dynamic tasks (emotion, action units) always;
a static task when that track has no answer for it yet, when this window's best crop is
clearly better (its quality score, in [0, 1] as `ingest.crops.CropQuality.score`, at
least `quality_margin` above the crop of the last answer), or when `refresh_interval_s`
of stream time have passed since that answer.

Two verbs, each given a `Sighting` (whose window, its crop quality, its time):
`tasks_for` (a pure query) before a window goes to the model, and `mark_answered` once
its answers exist, so a window dropped on the way (stale, queue
full, model error) does not count as asked. Memory is bounded: at most `max_tracks`
tracks are remembered (least recently answered forgotten first); `forget_stream` drops
a stopped stream's tracks. Pure: no threads, no I/O; the worker owns one per model stage.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from models.facellava.answers import Task

STATIC_TASKS: frozenset[Task] = frozenset({Task.AGE, Task.ATTRIBUTES})
"""Tasks whose answer holds for a person: asked once, refreshed on a better crop or a timer."""


@dataclass(frozen=True)
class Sighting:
    """One window of one person: whose it is (stream, session, track), the quality of its
    best crop and its time `at_s` (stream time of `session`, so times of different
    sessions are never compared)."""

    stream_id: str
    track_id: int
    crop_quality: float
    at_s: float
    session: str = ""

    @property
    def person(self) -> tuple[str, str, int]:
        """The key answers are remembered by: a restarted live stream's track 1 is someone else."""
        return (self.stream_id, self.session, self.track_id)


@dataclass(frozen=True)
class _Answered:
    quality: float
    at_s: float


class StaticTaskPolicy:
    """Per (stream, track): ask static tasks once, again on a clearly better crop or a timer."""

    def __init__(
        self,
        *,
        quality_margin: float = 0.15,
        refresh_interval_s: float = 60.0,
        static_tasks: Iterable[Task] = STATIC_TASKS,
        max_tracks: int = 10_000,
    ) -> None:
        if quality_margin < 0 or refresh_interval_s <= 0 or max_tracks < 1:
            raise ValueError(
                "quality_margin must be >= 0, refresh_interval_s > 0 and max_tracks >= 1"
            )
        self.quality_margin = quality_margin
        self.refresh_interval_s = refresh_interval_s
        self.static_tasks = frozenset(static_tasks)
        self.max_tracks = max_tracks
        # (stream, session, track): a restarted live stream's track 1 is someone else.
        self._answered: OrderedDict[tuple[str, str, int], dict[Task, _Answered]] = OrderedDict()

    def __len__(self) -> int:
        """Tracks remembered."""
        return len(self._answered)

    def tasks_for(self, seen: Sighting, tasks: Iterable[Task]) -> tuple[Task, ...]:
        """The subset of `tasks` (order kept) the window `seen` should ask."""
        known = self._answered.get(seen.person, {})
        chosen = []
        for task in tasks:
            last = known.get(task) if task in self.static_tasks else None
            if (
                last is None
                or seen.crop_quality >= last.quality + self.quality_margin
                or seen.at_s - last.at_s >= self.refresh_interval_s
            ):
                chosen.append(task)
        return tuple(chosen)

    def mark_answered(self, seen: Sighting, tasks: Iterable[Task]) -> None:
        """Remember that `tasks` were answered on the window `seen`."""
        static = [task for task in tasks if task in self.static_tasks]
        if not static:
            return
        known = self._answered.pop(seen.person, {})
        for task in static:
            known[task] = _Answered(seen.crop_quality, seen.at_s)
        self._answered[seen.person] = known  # most recently answered last
        while len(self._answered) > self.max_tracks:
            self._answered.popitem(last=False)

    def forget_track(self, stream_id: str, track_id: int, *, session: str = "") -> None:
        """Drop one track (it ended)."""
        self._answered.pop((stream_id, session, track_id), None)

    def forget_stream(self, stream_id: str) -> None:
        """Drop every track of a stream (it stopped)."""
        for key in [key for key in self._answered if key[0] == stream_id]:
            del self._answered[key]
