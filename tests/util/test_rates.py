"""Token buckets shared through one SQLite file: refill, burst, the wait they answer, and one
limit held across processes."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from clipsearch.util.rates import TokenBuckets


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_full_bucket_lets_its_burst_through_then_says_how_long_to_wait(tmp_path: Path) -> None:
    clock = Clock()
    buckets = TokenBuckets(tmp_path / "rates.sqlite", clock)
    assert [buckets.take("key:a", 2.0, 3.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("key:a", 2.0, 3.0) == pytest.approx(0.5)  # one token comes back every half second
    clock.now += 0.25
    assert buckets.take("key:a", 2.0, 3.0) == pytest.approx(0.25)  # a refused request takes nothing
    clock.now += 0.25
    assert buckets.take("key:a", 2.0, 3.0) == 0.0


def test_a_bucket_never_holds_more_than_its_burst_and_buckets_are_separate(tmp_path: Path) -> None:
    clock = Clock()
    buckets = TokenBuckets(tmp_path / "rates.sqlite", clock)
    buckets.take("key:a", 1.0, 2.0)
    clock.now += 3600
    assert [buckets.take("key:a", 1.0, 2.0) == 0 for _ in range(3)] == [True, True, False]
    assert buckets.take("key:b", 1.0, 2.0) == 0


def _take_many(path: Path) -> int:
    buckets = TokenBuckets(path, Clock())  # every process at the same instant: nothing refills
    return sum(buckets.take("address:10.0.0.1", 1.0, 5.0) == 0 for _ in range(20))


def test_processes_sharing_the_file_share_the_limit(tmp_path: Path) -> None:
    with ProcessPoolExecutor(4) as pool:
        allowed = list(pool.map(_take_many, [tmp_path / "rates.sqlite"] * 4))
    assert sum(allowed) == 5  # the burst, once, across all four: not five each
