"""The micro-batcher groups concurrent items, keeps each result with its caller, and never loses one."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from clipsearch.util.batching import MicroBatcher


class Recorder:
    """A `process` that squares numbers and records the batches it was given; can be held shut."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()

    def __call__(self, items: list[int]) -> list[int]:
        self.started.set()
        self.gate.wait()
        self.batches.append(items)
        return [item * item for item in items]


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Return once `condition()` holds (checked every millisecond); fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the condition never came true"
        time.sleep(0.001)


def test_a_lone_item_is_processed_as_a_batch_of_one() -> None:
    recorder = Recorder()
    batcher = MicroBatcher(recorder, max_batch=8)
    assert batcher.submit(3).result(timeout=5) == 9
    assert recorder.batches == [[3]]
    batcher.close()


def test_items_that_queue_behind_a_running_batch_form_the_next_batch_in_order() -> None:
    recorder = Recorder()
    batcher = MicroBatcher(recorder, max_batch=4)
    recorder.gate.clear()
    first = batcher.submit(1)
    recorder.started.wait(5)
    waiting = [batcher.submit(number) for number in range(2, 8)]
    recorder.gate.set()
    assert first.result(timeout=5) == 1
    assert [future.result(timeout=5) for future in waiting] == [number * number for number in range(2, 8)]
    assert recorder.batches == [[1], [2, 3, 4, 5], [6, 7]]
    assert batcher.mean_batch == pytest.approx(7 / 3)
    batcher.close()


def test_a_wait_window_gathers_items_that_arrive_soon_after_the_first() -> None:
    recorder = Recorder()
    # The window is far longer than the 0.05 s gap below; the batch closes when full (3), not after it.
    batcher = MicroBatcher(recorder, max_batch=3, window_s=30.0)
    futures = [batcher.submit(1)]
    time.sleep(0.05)  # the batcher holds the first item and is gathering more
    futures += [batcher.submit(number) for number in (2, 3)]
    assert [future.result(timeout=5) for future in futures] == [1, 4, 9]
    assert recorder.batches == [[1, 2, 3]]
    batcher.close()


def test_a_failing_batch_gives_its_error_to_every_caller_and_the_batcher_goes_on() -> None:
    def fail_on_negative(items: list[int]) -> list[int]:
        if any(item < 0 for item in items):
            raise ValueError("negative")
        return items

    batcher = MicroBatcher(fail_on_negative, max_batch=4)
    with pytest.raises(ValueError, match="negative"):
        batcher.submit(-1).result(timeout=5)
    assert batcher.submit(5).result(timeout=5) == 5
    batcher.close()


def test_a_process_returning_the_wrong_number_of_results_is_an_error_not_a_mismatch() -> None:
    batcher: MicroBatcher[int, int] = MicroBatcher(lambda items: items[:-1], max_batch=4)
    with pytest.raises(RuntimeError, match="batch of 1 gave 0 results"):
        batcher.submit(1).result(timeout=5)
    batcher.close()


def test_cancelled_items_are_dropped_before_their_batch_runs() -> None:
    recorder = Recorder()
    batcher = MicroBatcher(recorder, max_batch=8)
    recorder.gate.clear()
    batcher.submit(1)
    recorder.started.wait(5)
    abandoned, kept = batcher.submit(2), batcher.submit(3)
    assert abandoned.cancel()
    recorder.gate.set()
    assert kept.result(timeout=5) == 9
    assert recorder.batches == [[1], [3]]
    batcher.close()


def test_closing_finishes_what_was_submitted_and_refuses_new_items() -> None:
    recorder = Recorder()
    batcher = MicroBatcher(recorder, max_batch=1)
    recorder.gate.clear()
    running = batcher.submit(1)
    recorder.started.wait(5)
    waiting = batcher.submit(2)
    closing = threading.Thread(target=batcher.close)
    closing.start()
    wait_until(lambda: batcher._closed)  # close() has been called while the first item still runs
    recorder.gate.set()
    closing.join(5)
    assert running.result(timeout=5) == 1 and waiting.result(timeout=5) == 4
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(3)


def test_many_threads_each_get_their_own_result() -> None:
    batcher = MicroBatcher(Recorder(), max_batch=16)
    results: dict[int, int] = {}

    def ask(number: int) -> None:
        results[number] = batcher.submit(number).result(timeout=10)

    threads = [threading.Thread(target=ask, args=(number,)) for number in range(200)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {number: number * number for number in range(200)}
    batcher.close()


def test_settings_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(Recorder(), max_batch=0)
    with pytest.raises(ValueError, match="window_s"):
        MicroBatcher(Recorder(), window_s=-1)


def test_queries_go_before_waiting_background_items_which_fill_the_batch_up_to_their_cap() -> None:
    recorder = Recorder()
    batcher = MicroBatcher(recorder, max_batch=8, max_background=3)
    recorder.gate.clear()
    first = batcher.submit(1)
    recorder.started.wait(5)
    writes = [batcher.submit(number, background=True) for number in range(10, 20)]
    queries = [batcher.submit(number) for number in (2, 3)]
    recorder.gate.set()
    assert [future.result(timeout=5) for future in [first, *queries, *writes]] == \
        [number * number for number in (1, 2, 3, *range(10, 20))]  # each caller gets its own square
    assert recorder.batches[:3] == [[1], [2, 3, 10, 11, 12], [13, 14, 15]]
    assert sorted(item for batch in recorder.batches for item in batch) == [1, 2, 3, *range(10, 20)]
    batcher.close()


def test_a_query_during_a_write_storm_waits_for_one_small_batch_of_writes_at_most() -> None:
    recorder = Recorder()
    batcher = MicroBatcher(recorder, max_batch=64, max_background=4)
    recorder.gate.clear()
    writes = [batcher.submit(number, background=True) for number in range(100)]
    recorder.started.wait(5)  # a batch of at most 4 writes is running
    query = batcher.submit(7)
    recorder.gate.set()
    assert query.result(timeout=5) == 49
    batches_before_the_query = next(number for number, batch in enumerate(recorder.batches) if 7 in batch)
    assert batches_before_the_query == 1 and len(recorder.batches[0]) <= 4
    assert [future.result(timeout=5) for future in writes] == [number * number for number in range(100)]
    batcher.close()


def test_closing_finishes_background_items_already_submitted() -> None:
    recorder = Recorder()
    batcher = MicroBatcher(recorder, max_batch=8, max_background=2)
    writes = [batcher.submit(number, background=True) for number in range(7)]
    batcher.close()
    assert [future.result(timeout=5) for future in writes] == [number * number for number in range(7)]
