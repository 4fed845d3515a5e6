"""Waiting for submissions without a device: a fake kp Sequence stands in for one in flight."""
from vkloss.runtime import queue as queue_module
from vkloss.runtime.queue import Queue, Submission


class FakeSequence:
    """Finishes after `polls` fence polls (None: never while polled; eval_await then blocks until it is)."""

    def __init__(self, polls):
        self.polls, self.polled, self.awaited, self.destroyed = polls, 0, False, False

    def is_complete(self):
        self.polled += 1
        return self.polls is not None and self.polled > self.polls

    def eval_await(self):
        self.awaited = True

    def destroy(self):
        self.destroyed = True


def in_flight(queue, *sequences):
    queue.in_flight = [Submission(sequence, set(), payload=i, timed=False, own=True)
                       for i, sequence in enumerate(sequences)]


def test_a_wait_polls_the_fence_and_takes_the_oldest_submission_first():
    queue = Queue(manager=None)
    first, second = FakeSequence(polls=3), FakeSequence(polls=0)
    in_flight(queue, first, second)
    assert queue.wait() == (0, None)
    assert first.polled == 4 and first.awaited and first.destroyed  # polled until done, then its fence waited on
    assert [s.sequence for s in queue.in_flight] == [second] and not second.polled
    assert queue.wait() == (1, None) and queue.wait() is None


def test_a_long_wait_stops_polling_and_blocks(monkeypatch):
    monkeypatch.setattr(queue_module, "SPIN_SECONDS", 0.02)
    queue = Queue(manager=None)
    never = FakeSequence(polls=None)
    in_flight(queue, never)
    assert queue.wait() == (0, None)  # returns: the polls gave up after SPIN_SECONDS, and the fence was waited on
    assert never.awaited and never.polled >= 1
