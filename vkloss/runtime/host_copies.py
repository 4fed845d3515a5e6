"""Host copies that cannot go stale: versions, copy jobs and the futures that wait for them. Plain Python.

- Every buffer carries a write `version`, bumped by each recorded write (a kernel's output, a copy, an upload).
- A host copy is a `CopyJob`: one buffer at one version, copied into a staging block that the job owns until the
  copy has run and its values are taken. Every read of that buffer at that version shares the job.
- A buffer's values are host-valid only while the version they were copied at is the buffer's current version:
  `Buffer.host` holds them with `host_version`, and a later write makes them stale by moving `version` on, never
  by anyone's bookkeeping.
- `PendingRead` is a Future over jobs: `result()` gives the values as of the call that made it, whatever ran
  since; `done()` asks the engine, which submits what the copy waits on and asks the fence.
"""
from __future__ import annotations

import numpy as np


class CopyJob:
    """One buffer's value at one version on its way to the host (or, made `ready`, already there)."""

    __slots__ = ("buffer", "version", "staging", "values", "submitted")

    def __init__(self, buffer, version: int, staging):
        self.buffer, self.version, self.staging = buffer, version, staging
        self.values: np.ndarray | None = None
        self.submitted = False

    @classmethod
    def ready(cls, values: np.ndarray) -> "CopyJob":
        job = cls(None, 0, None)
        job.values, job.submitted = values, True
        return job

    @property
    def done(self) -> bool:
        return self.values is not None

    def take(self) -> None:
        """The copy ran: its values, out of the staging block (which goes back to the caller's pool), and onto the
        buffer as host-valid if nothing wrote it since."""
        self.values = np.array(self.staging.handle.data(), copy=True)
        buffer, self.buffer, self.staging = self.buffer, None, None
        if buffer is None:  # a captured step's check count: no buffer to be host-valid for
            return
        if buffer.version == self.version:
            buffer.host, buffer.host_version = self.values, self.version
        if buffer.copy_job is self:
            buffer.copy_job = None


class PendingRead:
    """Host copies of buffers, as a `concurrent.futures.Future` gives a result: `done()` without waiting,
    `result()` waiting if need be (the same arrays on every call)."""

    __slots__ = ("_engine", "_jobs", "_values")

    def __init__(self, engine, jobs: list[CopyJob]):
        self._engine, self._jobs, self._values = engine, jobs, None

    def done(self) -> bool:
        if self._values is None and not self._engine.poll(self._jobs):
            return False
        return True

    def arrived(self) -> bool:
        """Whether the values are on the host, without submitting or asking the device."""
        return self._values is not None or all(job.done for job in self._jobs)

    def result(self) -> list[np.ndarray]:
        if self._values is None:
            self._engine.finish(self._jobs)
            self._values = [job.values.copy() for job in self._jobs]  # the caller's own: the job's are shared
            self._jobs = None
        return self._values
