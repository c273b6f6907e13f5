"""`StaticTaskPolicy`: age and attributes once per person; emotion and AUs every window."""

from __future__ import annotations

import pytest

from models.facellava.answers import Task
from worker.static_tasks import Sighting, StaticTaskPolicy

ALL = (Task.EMOTION, Task.AGE, Task.ATTRIBUTES, Task.ACTION_UNITS)
DYNAMIC = (Task.EMOTION, Task.ACTION_UNITS)


def test_a_new_person_is_asked_everything_then_only_the_dynamic_tasks():
    policy = StaticTaskPolicy(quality_margin=0.15, refresh_interval_s=60)
    assert policy.tasks_for(Sighting("cam", 1, 0.5, 0.0), ALL) == ALL
    policy.mark_answered(Sighting("cam", 1, 0.5, 0.0), ALL)
    for window in range(1, 10):
        assert policy.tasks_for(Sighting("cam", 1, 0.55, 2.0 * window), ALL) == DYNAMIC
    # another person, another stream: asked in full
    assert policy.tasks_for(Sighting("cam", 2, 0.5, 4.0), ALL) == ALL
    assert policy.tasks_for(Sighting("door", 1, 0.5, 4.0), ALL) == ALL


def test_a_clearly_better_crop_asks_the_static_tasks_again():
    policy = StaticTaskPolicy(quality_margin=0.15, refresh_interval_s=60)
    policy.mark_answered(Sighting("cam", 1, 0.5, 0.0), ALL)
    assert policy.tasks_for(Sighting("cam", 1, 0.64, 2.0), ALL) == DYNAMIC  # not clearly better
    assert policy.tasks_for(Sighting("cam", 1, 0.65, 2.0), ALL) == ALL
    policy.mark_answered(Sighting("cam", 1, 0.65, 2.0), ALL)
    assert policy.tasks_for(Sighting("cam", 1, 0.7, 4.0), ALL) == DYNAMIC  # the bar moved up


def test_static_tasks_are_refreshed_after_the_interval():
    policy = StaticTaskPolicy(quality_margin=0.15, refresh_interval_s=30)
    policy.mark_answered(Sighting("cam", 1, 0.9, 100.0), ALL)
    assert policy.tasks_for(Sighting("cam", 1, 0.1, 129.9), ALL) == DYNAMIC
    assert policy.tasks_for(Sighting("cam", 1, 0.1, 130.0), ALL) == ALL


def test_a_window_that_was_not_answered_does_not_count_as_asked():
    policy = StaticTaskPolicy()
    assert policy.tasks_for(Sighting("cam", 1, 0.5, 0.0), ALL) == ALL  # query only
    assert policy.tasks_for(Sighting("cam", 1, 0.5, 2.0), ALL) == ALL
    policy.mark_answered(Sighting("cam", 1, 0.5, 2.0), (Task.EMOTION, Task.AGE))
    assert policy.tasks_for(Sighting("cam", 1, 0.5, 4.0), ALL) == (
        *DYNAMIC[:1],
        Task.ATTRIBUTES,
        DYNAMIC[1],
    )


def test_only_the_streams_tasks_are_returned_in_their_order():
    policy = StaticTaskPolicy()
    asked = (Task.AGE, Task.EMOTION)
    assert policy.tasks_for(Sighting("cam", 1, 0.5, 0.0), asked) == asked
    policy.mark_answered(Sighting("cam", 1, 0.5, 0.0), asked)
    assert policy.tasks_for(Sighting("cam", 1, 0.5, 2.0), asked) == (Task.EMOTION,)
    assert policy.tasks_for(Sighting("cam", 1, 0.5, 2.0), (Task.AGE,)) == ()


def test_memory_is_bounded_and_stopped_streams_are_forgotten():
    policy = StaticTaskPolicy(max_tracks=3)
    for track in range(5):
        policy.mark_answered(Sighting("cam", track, 0.5, float(track)), ALL)
    assert len(policy) == 3
    assert policy.tasks_for(Sighting("cam", 0, 0.5, 9.0), ALL) == ALL  # the oldest was dropped
    assert policy.tasks_for(Sighting("cam", 4, 0.5, 9.0), ALL) == DYNAMIC
    policy.mark_answered(Sighting("door", 1, 0.5, 0.0), ALL)
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
    policy.mark_answered(Sighting("cam", 1, 0.9, 3600.0, session="run-1"), ALL)
    assert policy.tasks_for(Sighting("cam", 1, 0.5, 3602.0, session="run-1"), ALL) == DYNAMIC
    assert policy.tasks_for(Sighting("cam", 1, 0.5, 2.0, session="run-2"), ALL) == ALL
