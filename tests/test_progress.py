"""Progress reports: from the work that knows (pool rendering, fine-tuning steps, loop
stages) to the one listener that draws them; nothing without a listener."""

from __future__ import annotations

import pytest
import torch

from stemloop import progress
from stemloop.config import CONFIG_DIR
from stemloop.datasets.batches import render_pool


@pytest.fixture
def heard():
    seen: list[tuple[str, float, float | None]] = []
    progress.listen(lambda label, done, total: seen.append((label, done, total)))
    yield seen
    progress.listen(None)


def test_reports_carry_their_scope_and_stages_finish(heard):
    progress.report("library")
    with progress.scope("music"), progress.scope("iteration 1"):
        with progress.Stage("scoring"):
            pass
        progress.report("fine-tuning", 50, 200)
    with pytest.raises(RuntimeError), progress.Stage("separating"):
        raise RuntimeError("a failed stage is not reported as finished")
    assert heard == [("library", 0.0, None), ("music, iteration 1: scoring", 0.0, None),
                     ("music, iteration 1: scoring", 1.0, 1.0),
                     ("music, iteration 1: fine-tuning", 50, 200), ("separating", 0.0, None)]
    progress.listen(None)
    progress.report("unheard")
    assert len(heard) == 5


def test_a_pool_is_the_same_however_its_rendering_is_split_and_reports_its_count(
        tiny_library, heard):
    schema = CONFIG_DIR / "mixbus/dialogue.yaml"
    alone = render_pool(schema, tiny_library, 6, 8000, 0.5, 3, ["dialogue"], workers=1)
    assert [done for _, done, _ in heard] == [0, 2, 4, 5, 6]  # four parts for one worker
    assert {(label, total) for label, _, total in heard} == {
        ("rendering training mixes", 6)}
    heard.clear()
    shared = render_pool(schema, tiny_library, 6, 8000, 0.5, 3, ["dialogue"], workers=2)
    assert torch.equal(alone, shared) and heard[-1][1:] == (6, 6)
