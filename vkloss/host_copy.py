"""What reaches the host: a tensor's values (`HostCopy`) and the device-side checks that ride with them.

Ops record checks on the device (a count of bad class indices, of NaNs under check_finite): a count buffer and the
message it raises. The checks recorded since the last host copy travel with the next one, in the same submission.
Once that copy has arrived, its counts are known, and a failed check raises:
- from `result()` of the copy that carried it, every time it is called (its values are suspect);
- once, from the next host read of anything on the Graph (any `result()`, `numpy()` or `item()`), or from
  `close()`, if the copy that carried it is never read. A check is never dropped.
"""
from __future__ import annotations


class CheckedRead:
    """The checks one host copy carried: (message, exception class) each, and their counts once they arrive."""

    __slots__ = ("pending", "entries", "first", "reported", "_failure")

    def __init__(self, pending, entries: list, first: int = 1):
        self.pending, self.entries = pending, entries
        self.first = first  # where the counts start in the pending read's values (after the tensor's own: 1)
        self.reported = False
        self._failure = None

    def failure(self):
        """A new exception for the first failed check (in recording order: the first op that failed), else None.
        Waits for the counts."""
        if self._failure is None:
            counts = self.pending.result()[self.first:]
            failed = [(error, message.format(count=int(count[0])))
                      for (message, error), count in zip(self.entries, counts) if count[0] != 0]
            self._failure = failed[0] if failed else False
        return self._failure[0](self._failure[1]) if self._failure else None


class DeviceChecks:
    """A Graph's checks: those recorded and not yet sent with a copy, and the copies that carry some until they are
    settled."""

    def __init__(self):
        self.waiting: list[tuple] = []  # (count buffer, message, exception class), in recording order
        self.positions: dict = {}  # (message, exception class) -> its place in `waiting`
        self._carried: list[CheckedRead] = []  # oldest first

    def take(self) -> tuple[list, list]:
        """The waiting checks' count buffers and (message, class) entries, for the next copy to carry."""
        waiting, self.waiting, self.positions = self.waiting, [], {}
        return [count for count, _, _ in waiting], [(message, error) for _, message, error in waiting]

    def set_aside(self) -> list:
        """The waiting checks, taken out (a captured step records its own meanwhile): give them to `restore`."""
        waiting, self.waiting, self.positions = self.waiting, [], {}
        return waiting

    def restore(self, waiting: list) -> None:
        self.waiting = waiting
        self.positions = {(message, error): index for index, (_, message, error) in enumerate(waiting)}

    def carried_by(self, pending, entries: list, first: int = 1) -> CheckedRead | None:
        """Checks `entries` travel with the host copy `pending` (their counts from its value `first` on)."""
        if not entries:
            return None
        read = CheckedRead(pending, entries, first)
        self._carried = [c for c in self._carried if not (c.pending.arrived() and not c.failure())]  # passed: gone
        self._carried.append(read)
        return read

    def raise_unreported(self) -> None:
        """Raise the oldest failed check that no read has raised yet, among the copies that have arrived."""
        still, failed = [], None
        for read in self._carried:
            if not read.pending.arrived():
                still.append(read)
            elif not read.reported and read.failure():
                read.reported = True
                failed = failed or read.failure()
        self._carried = still
        if failed:
            raise failed

    def clear(self) -> None:
        self.waiting, self.positions, self._carried = [], {}, []


class HostCopy:
    """A tensor's values on their way to the host: `Tensor.numpy_async()` and `item_async()` return one.

    Like a `concurrent.futures.Future`: `done()` says whether the values have arrived, without waiting (it submits
    the work they wait on if that is only recorded, then asks the device); `result()` returns them (a numpy array
    of the tensor's shape, or a float for `item_async`), the same object on every call, waiting only if the copy
    has not finished. The values are the tensor's at the call that made the copy, whatever ran since. `result()`
    raises what the device-side checks found (see this module's docstring)."""

    def __init__(self, checks: DeviceChecks, pending, carried: CheckedRead | None, shape, scalar: bool = False,
                 decode=None):
        self._checks, self._pending, self._carried = checks, pending, carried
        self._shape, self._scalar = shape, scalar
        self._decode = decode  # words -> values, for 16-bit tensors
        self._result = None

    def done(self) -> bool:
        return self._pending.done()

    def result(self):
        if self._result is None:
            values = self._pending.result()
            failure = self._carried.failure() if self._carried is not None else None
            if failure:
                self._carried.reported = True
                raise failure
            self._checks.raise_unreported()
            data = values[0] if self._decode is None else self._decode(values[0])
            self._result = float(data[0]) if self._scalar else data.reshape(self._shape)
        return self._result

    def __repr__(self) -> str:
        return f"HostCopy(shape={self._shape}, done={self.done()})"
