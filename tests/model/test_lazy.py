"""A model loaded on its first request and run in its own batcher."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import pytest

from clipsearch.errors import ModelLoadError, ServiceBusy
from clipsearch.model.lazy import LazyBatchedModel


class Doubler:
    """A 'model' that doubles numbers, counting the batches it ran."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def run(self, numbers: list[int]) -> Sequence[int]:
        self.batches.append(list(numbers))
        return [2 * number for number in numbers]


def lazy(load: Callable[[], Doubler], timeout_s: float = 5.0) -> LazyBatchedModel[Doubler, int, int]:
    return LazyBatchedModel(load, lambda model: model.run, what="the doubler", task="doubling", name="double",
                            max_batch=4, timeout_s=timeout_s)


def test_nothing_loads_until_the_first_request_and_then_only_once() -> None:
    loads: list[Doubler] = []

    def load() -> Doubler:
        loads.append(Doubler())
        return loads[-1]

    service = lazy(load)
    try:
        assert service.loaded is None and loads == [] and service.mean_batch == 0.0
        assert service.run([1, 2, 3]) == [2, 4, 6]
        assert service.run([5]) == [10]
        assert len(loads) == 1 and service.loaded is loads[0]
        assert all(len(batch) <= 4 for batch in loads[0].batches)
        assert service.mean_batch == 4 / len(loads[0].batches)
    finally:
        service.close()


def test_a_failed_load_is_reported_and_tried_again_by_the_next_request() -> None:
    attempts: list[int] = []

    def load() -> Doubler:
        attempts.append(1)
        if len(attempts) == 1:
            raise ModelLoadError("the network was down", "vqa_model")
        return Doubler()

    service = lazy(load)
    try:
        with pytest.raises(ModelLoadError, match="network"):
            service.run([1])
        assert service.run([1]) == [2] and len(attempts) == 2
    finally:
        service.close()


def test_a_model_still_loading_past_the_timeout_is_answered_busy_naming_it() -> None:
    release = threading.Event()

    def load() -> Doubler:
        release.wait(10)
        return Doubler()

    service = lazy(load, timeout_s=0.2)
    try:
        with pytest.raises(ServiceBusy, match="the doubler is still loading"):
            service.run([1])
        release.set()
        assert service.run([4]) == [8]
    finally:
        release.set()
        service.close()


def test_work_that_takes_longer_than_the_timeout_is_answered_busy() -> None:
    release = threading.Event()

    class Slow(Doubler):
        def run(self, numbers: list[int]) -> Sequence[int]:
            release.wait(10)
            return super().run(numbers)

    service = lazy(Slow, timeout_s=0.3)
    try:
        service.model()
        with pytest.raises(ServiceBusy, match="doubling did not finish within 0.3 s"):
            service.run([1])
    finally:
        release.set()
        service.close()
