"""Token buckets shared through one SQLite file: refill, burst, the wait they answer, one limit held
across processes, and any run of takes and waits against a plain token bucket."""

from __future__ import annotations

import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule

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


class BucketsMachine(RuleBasedStateMachine):
    """Takes and the passing of time against a plain token bucket per name, in floats."""

    RATE, BURST = 2.0, 3.0

    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.TemporaryDirectory()
        self.clock = Clock()
        self.buckets = TokenBuckets(Path(self.directory.name) / "rates.sqlite", self.clock)
        self.model: dict[str, tuple[float, float]] = {}
        """name → (tokens, when they were counted)."""

    @rule(name=st.sampled_from(["key:a", "key:b", "address:10.0.0.1"]))
    def take(self, name: str) -> None:
        tokens, counted = self.model.get(name, (self.BURST, self.clock.now))
        tokens = min(self.BURST, tokens + (self.clock.now - counted) * self.RATE)
        expected = 0.0 if tokens >= 1 else (1 - tokens) / self.RATE
        self.model[name] = (tokens - 1 if tokens >= 1 else tokens, self.clock.now)
        assert self.buckets.take(name, self.RATE, self.BURST) == pytest.approx(expected, abs=1e-9)

    @rule(seconds=st.floats(min_value=0, max_value=3, allow_nan=False))
    def wait(self, seconds: float) -> None:
        self.clock.now += seconds

    def teardown(self) -> None:
        self.directory.cleanup()


TestBucketsMachine = BucketsMachine.TestCase
TestBucketsMachine.settings = settings(max_examples=30, stateful_step_count=25, deadline=None)
