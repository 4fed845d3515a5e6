"""Submitting recorded work to the device: kp Sequences, the submissions in flight, their fences, and replay.

Eager work goes one submission at a time: the next waits for every fence first (a submission boundary, which also
orders the two submissions' buffers). A captured step's replay may go while the replay before it still runs
(`overlap`), so the device goes from one step to the next without waiting for the host: the engine then begins it
with a barrier on the blocks both use, which orders it after the earlier one on the queue. At most DEPTH are in
flight. A submission whose items repeat an earlier one exactly (same kernels, blocks and push constants: a training
step) replays that one's recorded Sequence instead of recording it again.
"""
from __future__ import annotations

import os
import time
from collections import OrderedDict

from .kompute import kp

from .recorder import Barrier, Copy, Dispatch

REPLAY_CACHE_SIZE = 16  # recorded submissions kept for replay (a training step alternates between a few at most)
DEPTH = 2  # submissions in flight at most: a replayed step, and the one after it
# A wait polls the fence this long, yielding the core between polls, before it blocks (CUDA's default schedule
# spins too). A thread blocked on a fence sleeps, and the wake-up costs more than a small step's kernels: on
# lavapipe (2 cores, in a VM) the main job's digits steps went from 1,250-1,320 to 1,350-1,700 a second with it.
SPIN_SECONDS = 1e-3

# Vulkan's flag bits, for kp.OpMemoryBarrier.
_SHADER_READ, _SHADER_WRITE, _TRANSFER_READ, _TRANSFER_WRITE, _HOST_READ = 0x20, 0x40, 0x800, 0x1000, 0x2000
_COMPUTE_STAGE, _TRANSFER_STAGE, _HOST_STAGE = 0x800, 0x1000, 0x4000
_ANY_WRITE = _SHADER_WRITE | _TRANSFER_WRITE
_ANY_ACCESS = _SHADER_READ | _SHADER_WRITE | _TRANSFER_READ | _TRANSFER_WRITE
_DEVICE_STAGES = _COMPUTE_STAGE | _TRANSFER_STAGE


def kp_op(item):
    """The kp operation that records `item`."""
    kind = type(item)
    if kind is Dispatch:
        # Always pass push constants: without them kp reuses whatever was pushed last.
        return kp.OpAlgoDispatch(item.kernel.result(), item.push)  # made on a compiling thread: algorithms.py
    if kind is Copy:
        return kp.OpTensorCopy([item.source.handle, item.target.handle])
    if kind is Barrier:
        tensors = [block.handle for block in item.blocks]
        if item.to_host:
            return kp.OpMemoryBarrier(tensors, _TRANSFER_WRITE, _HOST_READ, _TRANSFER_STAGE, _HOST_STAGE)
        return kp.OpMemoryBarrier(tensors, _ANY_WRITE, _ANY_ACCESS, _DEVICE_STAGES, _DEVICE_STAGES)
    raise TypeError(f"not a recorded item: {item!r}")


class Submission:
    """What is in flight: its sequence, the blocks it uses, and what waits for it to finish (`payload`). `own`: a
    sequence recorded for this submission alone (its cached twin was still in flight), destroyed once it has run."""

    __slots__ = ("sequence", "blocks", "payload", "timed", "own")

    def __init__(self, sequence, blocks: set, payload, timed: bool, own: bool = False):
        self.sequence, self.blocks, self.payload, self.timed, self.own = sequence, blocks, payload, timed, own


class Queue:
    def __init__(self, manager, timestamp_period_ns: float = 0.0):
        self._manager = manager
        self._period = timestamp_period_ns
        self.in_flight: list[Submission] = []  # oldest first
        self._replays: OrderedDict = OrderedDict()  # submission key -> its recorded Sequence
        self._replays_by_block: dict[int, set] = {}
        self._spare: list = []
        self.submissions = self.replays = self.dispatches = 0

    def busy(self, block) -> bool:
        """Whether a submission in flight uses `block`."""
        return any(block in submission.blocks for submission in self.in_flight)

    def blocks_in_flight(self) -> set:
        return set().union(*(submission.blocks for submission in self.in_flight))

    def submit(self, items: list, blocks: list, payload=None, timed: bool = False, overlap: bool = False) -> None:
        """Submit `items`. `payload` comes back from the `wait` that finishes this one. `timed`: in a sequence of its
        own with timestamps around it. Without `overlap` nothing may be in flight (`wait` first); with it, fewer
        than DEPTH, and `items` must begin with a barrier on the blocks they share with those."""
        assert len(self.in_flight) < (DEPTH if overlap else 1), "wait for the submissions in flight first"
        key = tuple(item.key for item in items)
        sequence = None if timed else self._replays.get(key)
        own = False
        if sequence is not None and any(s.sequence is sequence for s in self.in_flight):
            sequence, own = self.record(items), True  # a Sequence is submitted again only once it has run
        elif sequence is not None:
            self._replays.move_to_end(key)
            self.replays += 1
        elif timed:
            sequence = self._manager.sequence(0, len(items))
            for item in items:
                sequence.record(kp_op(item))
        else:
            sequence = self._record(key, items, blocks)
        self.dispatches += sum(type(item) is Dispatch for item in items)
        self.submissions += 1
        # In flight before the call: a KeyboardInterrupt arrives between bytecodes, so after the submission, and
        # the queue still waits for it; one that arrives before it is submitted in `finally`. Every recorded item
        # runs: a flush is one submission.
        self.in_flight.append(Submission(sequence, set(blocks), payload, timed, own))
        try:
            sequence.eval_async()  # the patched binding: submit what is recorded, no re-recording, no wait
        finally:
            if not sequence.is_running():
                sequence.eval_async()

    def record(self, items: list):
        """A new sequence holding `items`, kept by the caller (not in the replay cache)."""
        sequence = self._manager.sequence()
        for item in items:
            sequence.record(kp_op(item))
        return sequence

    def _record(self, key: tuple, items: list, blocks: list):
        sequence = self._spare.pop() if self._spare else self._manager.sequence()
        for item in items:
            sequence.record(kp_op(item))
        self._replays[key] = sequence
        for block in blocks:
            self._replays_by_block.setdefault(block.serial, set()).add(key)
        while len(self._replays) > REPLAY_CACHE_SIZE:
            _, old = self._replays.popitem(last=False)
            old.clear()  # drops its ops, and with them their tensors; the command pool lets it be recorded again
            self._spare.append(old)
        return sequence

    def oldest_complete(self) -> bool:
        """Whether the oldest submission in flight has finished (its fence says so; nothing waits)."""
        return self.in_flight[0].sequence.is_complete()

    def wait(self):
        """Wait for the oldest submission in flight, if any: (its payload, its device seconds or None), or None
        when nothing was in flight."""
        if not self.in_flight:
            return None
        sequence = self.in_flight[0].sequence
        deadline = time.perf_counter() + SPIN_SECONDS
        while not sequence.is_complete() and time.perf_counter() < deadline:
            os.sched_yield()
        submission = self.in_flight.pop(0)
        sequence.eval_await()
        seconds = None
        if submission.timed:
            ticks = sequence.get_timestamps()
            seconds = (ticks[-1] - ticks[0]) * self._period * 1e-9
        if submission.timed or submission.own:
            sequence.destroy()
        return submission.payload, seconds

    def forget(self, block) -> None:
        """Drop recorded sequences that use `block` (about to be destroyed: they hold its tensor alive)."""
        for key in self._replays_by_block.pop(block.serial, ()):
            sequence = self._replays.pop(key, None)
            if sequence is not None:
                sequence.destroy()

    def close(self) -> None:
        for sequence in (*self._replays.values(), *self._spare):
            sequence.destroy()
        self._replays.clear()
        self._replays_by_block.clear()
        self._spare.clear()

    def counts(self) -> dict:
        return {"replays": len(self._replays)}
