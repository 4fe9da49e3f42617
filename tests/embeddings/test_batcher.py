"""The length-aware grouping of one batch into forward passes."""

from __future__ import annotations

import random

from services.embeddings.batcher import plan_groups


def test_groups_cover_every_row_once_sorted_by_length() -> None:
    rng = random.Random(3)
    for n in (1, 2, 31, 32, 500):
        lengths = [rng.randint(3, 200) for _ in range(n)]
        groups = plan_groups(lengths)
        flat = [i for g in groups for i in g]
        assert sorted(flat) == list(range(n))
        widths = [lengths[i] for i in flat]
        assert widths == sorted(widths)
        assert max(len(g) for g in groups) <= 128


def test_equal_lengths_stay_one_pass() -> None:
    assert plan_groups([12] * 32) == [list(range(32))]


def test_mixed_lengths_are_split() -> None:
    assert len(plan_groups([5] * 16 + [200] * 16)) == 2
