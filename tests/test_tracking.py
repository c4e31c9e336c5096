"""MLflow tracking: a rerun after a crash continues the unfinished record, not a new one."""

from __future__ import annotations

from stemloop.config import load_config
from stemloop.tasks.tracking import Tracker


def test_unfinished_runs_are_reopened_finished_ones_are_not(tmp_path):
    config = load_config("smoke", ["tracking.enabled=true"])
    tracker = Tracker(config, tmp_path)
    parent = tracker.start("scene/run-1", {"a": 1}, resume="/runs/scene/run-1")
    child = tracker.start("iteration-0", parent=parent, resume="iteration-0")
    other = tracker.start("scene/run-2", resume="/runs/scene/run-2")
    # the process dies here: nothing is ended; a rerun of the same folder reopens both
    again = Tracker(config, tmp_path)
    assert again.start("scene/run-1", {"a": 1}, resume="/runs/scene/run-1") == parent
    assert again.start("iteration-0", parent=parent, resume="iteration-0") == child
    assert again.start("iteration-1", parent=parent, resume="iteration-1") != child
    assert again.client.get_run(parent).info.status == "RUNNING"
    again.end(child)
    again.end(parent)
    # a finished run is a record: running the folder again starts a new one
    fresh = again.start("scene/run-1", resume="/runs/scene/run-1")
    assert fresh not in (parent, other)
    assert again.start("plain") != again.start("plain")  # no key: always new
