"""The ingestion boundary: a failing batch is split until the message at fault is alone; the
infrastructure's failures are not contained."""

import asyncio

import pytest
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError

from state.faults import NonFinite, StoreFailure
from streams.boundary import contain, is_infrastructure, rejection_for


def run(batch, fails_on, error: Exception | None = None):
    error = error or ValueError("bad")
    processed, poisoned, calls = [], [], []

    async def process(part):
        calls.append(list(part))
        if any(m in fails_on for m in part):
            raise error
        processed.extend(part)

    async def poison(m, rejection):
        poisoned.append((m, rejection.reason, rejection.detail))

    asyncio.run(contain("t", batch, process, poison))
    return processed, poisoned, calls


def test_one_poison_message_costs_one_dead_letter_and_the_rest_are_processed_once_in_order():
    batch = list(range(512))
    processed, poisoned, calls = run(batch, {300})
    assert processed == [m for m in batch if m != 300]
    assert poisoned == [(300, "internal_error", "ValueError: bad")]
    assert len(calls) <= 2 * 9 + 1  # log2(512) levels, two halves each


def test_several_poison_messages_each_become_their_own_dead_letter():
    processed, poisoned, _ = run(list(range(10)), {0, 5, 9})
    assert [p[0] for p in poisoned] == [0, 5, 9] and processed == [1, 2, 3, 4, 6, 7, 8]


def test_a_batch_that_succeeds_is_processed_once_whole():
    processed, poisoned, calls = run([1, 2, 3], set())
    assert processed == [1, 2, 3] and poisoned == [] and calls == [[1, 2, 3]]


def test_a_message_fault_keeps_its_own_reason():
    _, poisoned, _ = run([1], {1}, NonFinite("the user state is not finite"))
    assert poisoned == [(1, "non_finite", "NonFinite: the user state is not finite")]


@pytest.mark.parametrize(
    "error", [StoreFailure("disk"), KafkaConnectionError(), OSError("EIO"), MemoryError()]
)
def test_the_infrastructures_failures_propagate_without_any_dead_letter(error):
    with pytest.raises(type(error)):
        run([1, 2, 3], {2}, error)


def test_what_is_whose_fault():
    assert is_infrastructure(KafkaConnectionError()) and is_infrastructure(StoreFailure("x"))
    assert not is_infrastructure(MessageSizeTooLargeError()) and not is_infrastructure(
        RecursionError()
    )
    assert not is_infrastructure(
        UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")
    )
    assert len(rejection_for(ValueError("x" * 10_000)).detail) == 500
