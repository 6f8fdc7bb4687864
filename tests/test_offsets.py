"""Per-partition progress: events applied in offset order, lost offsets re-read, durable offsets
for commits."""

from __future__ import annotations

import pytest
from faust.types import TP

from streams.offsets import HOLE_CONFIRMATIONS, PartitionProgress, Verdict

CLICKS = TP("clicks", 0)


def started(offset: int = 10) -> PartitionProgress:
    progress = PartitionProgress(["clicks"])
    progress.start(CLICKS, offset)
    return progress


def test_events_apply_in_order_and_redeliveries_are_seen():
    progress = started()
    assert [progress.admit(CLICKS, o) for o in (10, 11, 12)] == [Verdict.APPLY] * 3
    assert progress.admit(CLICKS, 11) is Verdict.SEEN
    assert progress.next_offset[CLICKS] == 13


def test_a_lost_offset_holds_back_later_events_until_it_is_re_read():
    progress = started()
    assert progress.admit(CLICKS, 10) is Verdict.APPLY
    # 11-13 were lost
    assert [progress.admit(CLICKS, o) for o in (14, 15)] == [Verdict.MISSING_BEFORE] * 2
    assert progress.re_reading(CLICKS) == 11
    assert [progress.admit(CLICKS, o) for o in (11, 12, 13, 14, 15)] == [Verdict.APPLY] * 5
    assert not progress.gaps


def test_missing_offsets_that_arrive_later_in_the_same_batch_need_no_re_read():
    progress = started()
    assert progress.admit(CLICKS, 12) is Verdict.MISSING_BEFORE  # a stale copy first
    assert [progress.admit(CLICKS, o) for o in (10, 11, 12)] == [Verdict.APPLY] * 3
    assert progress.re_reading(CLICKS) is None


def test_a_hole_in_the_log_is_accepted_after_repeated_re_reads():
    progress = started()
    for _ in range(HOLE_CONFIRMATIONS):
        assert progress.admit(CLICKS, 14) is Verdict.MISSING_BEFORE  # 10-13 never come: a real hole
        assert progress.admit(CLICKS, 15) is Verdict.MISSING_BEFORE
        progress.re_reading(CLICKS)
    assert progress.admit(CLICKS, 14) is Verdict.APPLY
    assert progress.admit(CLICKS, 15) is Verdict.APPLY


def test_stale_deliveries_without_a_re_read_do_not_confirm_a_hole():
    progress = started()
    for _ in range(HOLE_CONFIRMATIONS + 2):
        assert progress.admit(CLICKS, 14) is Verdict.MISSING_BEFORE


def test_offsets_become_durable_only_when_made_so_and_are_forgotten_on_revoke():
    progress = started()
    for o in (10, 11, 12):
        progress.admit(CLICKS, o)
    # admitted, not yet durable (faust_compat.cap_commits reads this)
    assert progress.durable == {CLICKS: 10}
    after_batch = progress.position([CLICKS, TP("decay-ticks", 0)])
    assert after_batch == {CLICKS: 13}
    progress.admit(CLICKS, 13)  # the next batch, not durable yet
    progress.made_durable(after_batch)
    assert progress.durable == {CLICKS: 13}
    progress.forget([CLICKS])
    assert progress.durable == {} and not progress.knows(CLICKS)


def test_a_partition_behind_its_end_with_nothing_arriving_is_stalled():
    progress = started()
    progress.admit(CLICKS, 10)
    assert progress.stalled({CLICKS: 50}) == {}  # first look: behind, maybe still arriving
    progress.admit(CLICKS, 11)
    assert progress.stalled({CLICKS: 50}) == {}  # moved on
    assert progress.stalled({CLICKS: 50}) == {CLICKS: 12}  # no progress since the last look
    for o in range(12, 50):
        progress.admit(CLICKS, o)
    # caught up
    assert progress.stalled({CLICKS: 50}) == {} and progress.stalled({CLICKS: 50}) == {}


@pytest.mark.parametrize("error", ["KafkaConnectionError", "KafkaTimeoutError"])
def test_a_timer_skips_a_tick_when_the_broker_does_not_answer_instead_of_crashing_the_worker(error):
    """At a stop, the admin client's connection closes under an in-flight committed-offsets request: the stall
    timer raised KafkaConnectionError and faust took it for a crash (exit 1). Every timer of the app is
    guarded (``skip_without_broker``): the next tick looks again; any other error still raises."""
    import asyncio
    from types import SimpleNamespace

    from aiokafka import errors

    from streams.app import skip_without_broker
    from streams.checkpoints import Checkpoints

    tp = TP("clicks", 0)

    async def earliest_offsets(*tps):
        return {t: 0 for t in tps}

    async def unanswered(tps):
        raise getattr(errors, error)("Connection at 127.0.0.1:9092 closed")

    checkpoints = object.__new__(Checkpoints)  # only what the timer touches: no app, no broker
    checkpoints.app = SimpleNamespace(
        consumer=SimpleNamespace(
            assignment=lambda: {tp}, highwater=lambda tp: 5, earliest_offsets=earliest_offsets
        )
    )
    checkpoints.progress = PartitionProgress(["clicks"])
    checkpoints.committed_offsets = unanswered  # type: ignore[method-assign]
    with pytest.raises(getattr(errors, error)):  # unguarded, it reaches faust
        asyncio.run(checkpoints.re_read_stalled())
    asyncio.run(skip_without_broker(checkpoints.re_read_stalled)())
    assert not checkpoints.progress.knows(tp)  # not started: the next look starts it

    async def bug():
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):  # not the broker's: a defect is not hidden
        asyncio.run(skip_without_broker(bug)())


def test_callers_asking_committed_offsets_at_once_share_one_admin_client_once_it_has_started(
    monkeypatch,
):
    """At a restart the event agent, the catalogue agent and the stall timer all start partitions at once: the
    second asked through a client whose start was still under way (aiokafka: NodeNotReadyError, node id None)
    and the worker stopped (exit 70, seen in tests/test_faults.py's kill -9 restart)."""
    import asyncio

    from aiokafka.errors import NodeNotReadyError

    from streams import checkpoints as module

    started: list[object] = []

    class SlowAdmin:  # aiokafka's AIOKafkaAdminClient as far as Checkpoints uses it
        def __init__(self, **kwargs):
            self.ready = False

        async def start(self):
            started.append(self)
            await asyncio.sleep(0.05)  # bootstrap: metadata from the broker
            self.ready = True

        async def list_consumer_group_offsets(self, group, partitions):
            if not self.ready:
                raise NodeNotReadyError(
                    "Attempt to send a request to node which is not ready (node id None)."
                )
            return {}

    monkeypatch.setattr(module, "AIOKafkaAdminClient", SlowAdmin)
    checkpoints = object.__new__(module.Checkpoints)  # only what committed_offsets touches
    checkpoints.kafka, checkpoints.group, checkpoints._admin, checkpoints._admin_started = (
        {},
        "g",
        None,
        asyncio.Lock(),
    )

    async def three_at_once():
        return await asyncio.gather(
            *(checkpoints.committed_offsets([TP("clicks", p)]) for p in range(3))
        )

    assert asyncio.run(three_at_once()) == [{TP("clicks", p): None} for p in range(3)]
    assert len(started) == 1


def test_the_stall_timer_looks_only_at_partitions_still_assigned_after_it_started_new_ones():
    """A rebalance while the timer asked the broker for a partition's committed offset took a partition away;
    the timer then asked aiokafka for its high watermark (``AssertionError: Partition is not
    assigned``) and the
    worker crashed (seen on Apache Kafka, tests/test_faults.py's two-worker takeover)."""
    import asyncio
    from types import SimpleNamespace

    from streams.checkpoints import Checkpoints

    kept, taken = TP("clicks", 0), TP("clicks", 1)
    assignment = {kept, taken}

    async def earliest_offsets(*tps):
        return {t: 0 for t in tps}

    async def committed_offsets(tps):
        assignment.discard(taken)  # the rebalance, while this request is in flight
        return {t: 3 for t in tps}

    def highwater(tp):  # as aiokafka's AIOKafkaConsumer.highwater
        assert tp in assignment, "Partition is not assigned"
        return 5

    checkpoints = object.__new__(Checkpoints)  # only what the timer touches: no app, no broker
    checkpoints.app = SimpleNamespace(
        consumer=SimpleNamespace(
            assignment=lambda: set(assignment),
            highwater=highwater,
            earliest_offsets=earliest_offsets,
        )
    )
    checkpoints.progress = PartitionProgress(["clicks"])
    checkpoints.committed_offsets = committed_offsets  # type: ignore[method-assign]
    asyncio.run(checkpoints.re_read_stalled())
    assert checkpoints.progress.knows(kept)


@pytest.mark.parametrize(
    "reason, status",
    [
        ("ConsistencyError", 70),
        ("KafkaConnectionError", 70),
        ("StoreFailure", 70),
        ("ZeroDivisionError", 1),
    ],
)
def test_a_crash_by_the_broker_or_the_disk_exits_70_any_other_keeps_faust_s_status(
    monkeypatch, tmp_path, reason, status
):
    """faust ends a crashed worker with 1 whatever crashed it: a broker restart under load (faust's
    ConsistencyError at recovery: the changelog is shorter than what the table applied) ended it with 1."""
    import faust
    from aiokafka.errors import KafkaConnectionError
    from faust.exceptions import ConsistencyError

    from state.faults import StoreFailure
    from streams.faust_worker import Worker

    errors = {
        "ConsistencyError": ConsistencyError,
        "KafkaConnectionError": KafkaConnectionError,
        "StoreFailure": StoreFailure,
        "ZeroDivisionError": ZeroDivisionError,
    }
    worker = Worker(faust.App("crash-test", datadir=str(tmp_path)), stop_timeout_s=5.0)

    # what mode does after a crash: the reason kept, SystemExit(1) from its `exiting`
    def crashed(self):
        self.crash_reason = errors[reason]("what crashed it")
        raise SystemExit(1)

    monkeypatch.setattr(faust.Worker, "execute_from_commandline", crashed)
    with pytest.raises(SystemExit) as exited:
        worker.execute_from_commandline()
    assert exited.value.code == status
