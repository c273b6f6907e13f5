"""`StaticTaskPolicy`: age and attributes once per person; emotion and AUs every window."""

from __future__ import annotations

import pytest

from models.facellava.answers import Task
from worker.static_tasks import StaticTaskPolicy

ALL = (Task.EMOTION, Task.AGE, Task.ATTRIBUTES, Task.ACTION_UNITS)
DYNAMIC = (Task.EMOTION, Task.ACTION_UNITS)


def test_a_new_person_is_asked_everything_then_only_the_dynamic_tasks():
    policy = StaticTaskPolicy(quality_margin=0.15, refresh_interval_s=60)
    assert policy.tasks_for("cam", 1, ALL, 0.5, at_s=0.0) == ALL
    policy.mark_answered("cam", 1, ALL, 0.5, at_s=0.0)
    for window in range(1, 10):
        assert policy.tasks_for("cam", 1, ALL, 0.55, at_s=2.0 * window) == DYNAMIC
    # another person, another stream: asked in full
    assert policy.tasks_for("cam", 2, ALL, 0.5, at_s=4.0) == ALL
    assert policy.tasks_for("door", 1, ALL, 0.5, at_s=4.0) == ALL


def test_a_clearly_better_crop_asks_the_static_tasks_again():
    policy = StaticTaskPolicy(quality_margin=0.15, refresh_interval_s=60)
    policy.mark_answered("cam", 1, ALL, 0.5, at_s=0.0)
    assert policy.tasks_for("cam", 1, ALL, 0.64, at_s=2.0) == DYNAMIC  # not clearly better
    assert policy.tasks_for("cam", 1, ALL, 0.65, at_s=2.0) == ALL
    policy.mark_answered("cam", 1, ALL, 0.65, at_s=2.0)
    assert policy.tasks_for("cam", 1, ALL, 0.7, at_s=4.0) == DYNAMIC  # the bar moved up


def test_static_tasks_are_refreshed_after_the_interval():
    policy = StaticTaskPolicy(quality_margin=0.15, refresh_interval_s=30)
    policy.mark_answered("cam", 1, ALL, 0.9, at_s=100.0)
    assert policy.tasks_for("cam", 1, ALL, 0.1, at_s=129.9) == DYNAMIC
    assert policy.tasks_for("cam", 1, ALL, 0.1, at_s=130.0) == ALL


def test_a_window_that_was_not_answered_does_not_count_as_asked():
    policy = StaticTaskPolicy()
    assert policy.tasks_for("cam", 1, ALL, 0.5, at_s=0.0) == ALL  # query only
    assert policy.tasks_for("cam", 1, ALL, 0.5, at_s=2.0) == ALL
    policy.mark_answered("cam", 1, (Task.EMOTION, Task.AGE), 0.5, at_s=2.0)
    assert policy.tasks_for("cam", 1, ALL, 0.5, at_s=4.0) == (
        *DYNAMIC[:1],
        Task.ATTRIBUTES,
        DYNAMIC[1],
    )


def test_only_the_streams_tasks_are_returned_in_their_order():
    policy = StaticTaskPolicy()
    asked = (Task.AGE, Task.EMOTION)
    assert policy.tasks_for("cam", 1, asked, 0.5, at_s=0.0) == asked
    policy.mark_answered("cam", 1, asked, 0.5, at_s=0.0)
    assert policy.tasks_for("cam", 1, asked, 0.5, at_s=2.0) == (Task.EMOTION,)
    assert policy.tasks_for("cam", 1, (Task.AGE,), 0.5, at_s=2.0) == ()


def test_memory_is_bounded_and_stopped_streams_are_forgotten():
    policy = StaticTaskPolicy(max_tracks=3)
    for track in range(5):
        policy.mark_answered("cam", track, ALL, 0.5, at_s=float(track))
    assert len(policy) == 3
    assert policy.tasks_for("cam", 0, ALL, 0.5, at_s=9.0) == ALL  # the oldest was dropped
    assert policy.tasks_for("cam", 4, ALL, 0.5, at_s=9.0) == DYNAMIC
    policy.mark_answered("door", 1, ALL, 0.5, at_s=0.0)
    policy.forget_stream("cam")
    assert len(policy) == 1
    policy.forget_track("door", 1)
    assert len(policy) == 0


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        StaticTaskPolicy(refresh_interval_s=0)
    with pytest.raises(ValueError):
        StaticTaskPolicy(quality_margin=-0.1)


def test_a_new_session_of_a_stream_asks_its_track_ids_everything_again():
    """A restarted live stream starts its track ids (and stream time) again: its track 1
    is someone else, so nothing answered for the old session's track 1 carries over."""
    policy = StaticTaskPolicy(quality_margin=0.15, refresh_interval_s=60)
    policy.mark_answered("cam", 1, ALL, 0.9, at_s=3600.0, session="run-1")
    assert policy.tasks_for("cam", 1, ALL, 0.5, at_s=3602.0, session="run-1") == DYNAMIC
    assert policy.tasks_for("cam", 1, ALL, 0.5, at_s=2.0, session="run-2") == ALL
