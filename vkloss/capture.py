"""Whole-step capture: `step = g.capture(fn)` records a training step once and then replays it, with no Python per
op, as `torch.cuda.graphs` and `torch.compile(mode="reduce-overhead")` do.

    @g.capture
    def step():
        opt.zero_grad()
        loss = g.cross_entropy_loss(model(x), y)
        g.backward(loss)
        opt.step()
        return loss

    for batch, labels in data:
        x.copy_(batch); y.copy_(labels)   # the step's inputs: refilled in place
        losses.append(step().item_async())

- The first call runs `fn` as it is (it builds what the step needs once: kernels, optimizer state, ...); the second
  records it; every later call replays the recording: forward, backward, the optimizer's update and a host copy of
  each tensor `fn` returns, with the `copy_` calls made since, in one submission.
- `fn` may take Tensor arguments. A call with other Tensors of the same shapes and dtypes copies them into the
  recorded ones first; a call with other shapes or dtypes (or other plain values) records the step again for those,
  after one call as it is. Plain arguments must be hashable.
- The call returns what `fn` returned on its recording call: the same Tensors, updated by each replay (`.numpy()`,
  `.item_async()` read this replay's values; the host copy is already part of the step).
- Device-side checks (class indices out of range, `check_finite`) run in every replay and raise at the next host
  read, as they do in eager code.

What a replay cannot see, because no Python runs (CUDA Graphs have the same limits): a Python branch on values
read inside `fn`; a tensor made outside `fn` after the recording (rebinding `x = g.tensor(...)` instead of
`x.copy_(...)`); data uploaded inside `fn` (`g.tensor(array)` there is uploaded again as it was when recorded).
Raised, with CaptureError: a host read or a flush inside `fn`; accumulating into a gradient made before the step
(zero the gradients inside it: `opt.zero_grad()`).
"""
from __future__ import annotations

import functools

from .errors import CaptureError
from .tensor import Tensor


def _tensors(value) -> list:
    """The Tensors in what a step returned (nested in tuples, lists and dicts), in order."""
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _tensors(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _tensors(item)]
    return []


class _Recording:
    """One recorded signature of a step: its arguments, what it returned, its work, its checks."""

    def __init__(self, args, result, work, checks):
        self.args, self.result, self.work, self.checks = args, result, work, checks


class CapturedStep:
    """What `Graph.capture(fn)` returns: call it as you would call `fn`."""

    def __init__(self, graph, fn, warmup: int = 1):
        if not callable(fn):
            raise TypeError(f"g.capture takes a function (the step), got {type(fn).__name__}")
        if not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"g.capture: warmup must be a number of calls >= 0, got {warmup!r}")
        self._graph, self._fn, self._warmup = graph, fn, warmup
        self._recordings: dict = {}  # signature -> _Recording
        self._calls: dict = {}  # signature -> calls made as they are
        functools.update_wrapper(self, fn)

    def _signature(self, args: tuple) -> tuple:
        signature = []
        for position, arg in enumerate(args):
            if isinstance(arg, Tensor):
                if arg.graph is not self._graph:
                    raise ValueError(f"captured step {self.__name__}: argument {position} belongs to another Graph")
                signature.append((Tensor, arg.shape, arg.dtype, arg.requires_grad))
            else:
                try:
                    hash(arg)
                except TypeError:
                    raise TypeError(f"captured step {self.__name__}: argument {position} is a "
                                    f"{type(arg).__name__}; a captured step takes Tensors and hashable values "
                                    "(refill an input tensor with copy_)") from None
                signature.append((type(arg), arg))
        return tuple(signature)

    def __call__(self, *args):
        graph = self._graph
        graph.require_usable(f"captured step {self.__name__}")
        signature = self._signature(args)
        recording = self._recordings.get(signature)
        if recording is not None:
            return self._replay(recording, args)
        calls = self._calls[signature] = self._calls.get(signature, 0) + 1
        if calls <= self._warmup:
            return self._fn(*args)
        recording = self._record(args)
        self._recordings[signature] = recording
        return self._replay(recording, args, recorded=True)

    def _record(self, args) -> _Recording:
        graph, engine = self._graph, self._graph.engine
        aside = graph.checks.set_aside()  # checks of earlier eager work wait for the next eager read
        engine.begin_capture()
        try:
            result = self._fn(*args)
            checks = graph.checks.set_aside()
            work = engine.end_capture([t.buffer for t in _tensors(result)], [count for count, _, _ in checks])
        except BaseException:
            engine.abort_capture()
            graph.checks.restore(aside)
            raise
        graph.checks.restore(aside)
        return _Recording(args, result, work, [(message, error) for _, message, error in checks])

    def _replay(self, recording: _Recording, args, recorded: bool = False):
        graph, engine = self._graph, self._graph.engine
        if not recorded:
            for given, recorded_arg in zip(args, recording.args):
                if isinstance(given, Tensor) and given is not recorded_arg:
                    engine.copy(given.buffer, recorded_arg.buffer)
        _, checks = engine.replay(recording.work)
        if recording.checks:
            graph.checks.carried_by(engine.pending(checks), recording.checks, first=0)
        return recording.result

    def release(self) -> None:
        """Give the recordings' device memory back to the pool (the next call records again)."""
        for recording in self._recordings.values():
            self._graph.engine.release_capture(recording.work)
        self._recordings.clear()
        self._calls.clear()

    def __del__(self):
        try:
            self.release()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"CapturedStep({self.__name__}, {len(self._recordings)} recorded)"


__all__ = ["CapturedStep", "CaptureError"]
