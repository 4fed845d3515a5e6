"""The engine: one Graph's device work, the facade over the runtime's layers and the one place that submits.

    context  (the device's kp.Manager and memory budget, one per device and process)
    memory   (blocks and their pool)           recorder (items, hazards, barriers; plain Python)
    algorithms (kernels bound to blocks)       queue    (sequences, submissions in flight, replay)
    host_copies (versions and copy jobs; plain Python)

Calls run one way: the engine asks the layers; the pool asks for room through callbacks; the recorder never
submits. Recording is lazy: `dispatch`, `copy`, `upload_into` and `read_async` record items, and a submission
happens when the host needs a value, when a step ended and the next one allocates, or when too many items wait.
"""
from __future__ import annotations

import atexit
import threading
import weakref

import numpy as np

from ..device import DeviceInfo
from ..errors import CaptureError, DeviceMemoryError
from ..launch import WORKGROUP, LaunchPolicy
from .algorithms import Algorithms
from .buffer import Buffer, push_constants
from . import queue as queue_module
from .capture import CapturedWork, Ending, StepRecording
from .context import context
from .host_copies import CopyJob, PendingRead
from .memory import Pool
from .queue import Queue
from .recorder import Barrier, Copy, Dispatch, Recorder

MAX_PENDING = 1024  # submit on our own after this many recorded items, so a loop that never reads stays bounded
POOL_SHARE = 0.5  # of the memory budget, what idle pooled blocks may hold

_engines: "weakref.WeakSet[Engine]" = weakref.WeakSet()


@atexit.register
def _finish_in_flight_work() -> None:
    for engine in list(_engines):
        try:
            engine.wait()
        except Exception:
            pass


def engines_on(device_context) -> list:
    """The open engines on a device context."""
    return [e for e in list(_engines) if e.context is device_context and not e.closed]


class Engine:
    """Allocates buffers, records and submits work for one Graph on one device."""

    def __init__(self, device: DeviceInfo):
        self.device = device
        self.context = context(device)
        self.launch = LaunchPolicy(device)
        self._lock = threading.RLock()
        self.recorder = Recorder()
        self.queue = Queue(self.context.manager, device.timestamp_period_ns)
        self.algorithms = Algorithms(self.context.manager)
        self.pool = Pool(make=self.context.tensor, budget=self.context, is_busy=self.busy, drain=self.flush,
                         forget=self._forget, max_bytes=int(self.context.budget * POOL_SHARE),
                         others_make_room=self._evict_from_other_graphs)
        self._jobs: list[CopyJob] = []  # host copies recorded and not yet submitted
        self._step_ended = False  # submit before the next allocation or upload (see end_of_step)
        self._capture: StepRecording | None = None  # while a step is being captured
        self.last_gpu_seconds: float | None = None
        self.closed = False
        _engines.add(self)

    def _check_open(self, what: str) -> None:
        if self.closed:
            raise RuntimeError(f"{what}: this Graph is closed")

    def busy(self, block) -> bool:
        """Whether recorded or running work uses `block`."""
        return self.recorder.uses(block) or self.queue.busy(block)

    @property
    def stats(self) -> dict:
        return {"submissions": self.queue.submissions, "replays": self.queue.replays,
                "dispatches": self.queue.dispatches, "barriers": self.recorder.barriers,
                "algorithms_created": self.algorithms.created, "pipelines": self.algorithms.pipelines(),
                **self.pool.stats}

    def live_counts(self) -> dict:
        with self._lock:
            return {"algorithms": len(self.algorithms), **self.pool.counts(), **self.queue.counts()}

    # ---- buffers ---------------------------------------------------------------------------------------------
    def check_size(self, size: int, dtype=np.float32) -> None:
        """Raise DeviceMemoryError unless `size` elements fit one storage-buffer binding of this device.

        Kompute does not report an allocation or a dispatch beyond the device's limits, so we check first."""
        dtype = np.dtype(dtype)
        nbytes = int(size) * dtype.itemsize
        if nbytes > self.device.max_storage_buffer_range:
            raise DeviceMemoryError(
                f"a buffer of {size:,} {dtype} elements ({nbytes:,} bytes) exceeds {self.device.name}'s "
                f"maxStorageBufferRange of {self.device.max_storage_buffer_range:,} bytes "
                f"({self.device.max_storage_buffer_range // dtype.itemsize:,} elements per binding)")

    def alloc(self, size: int, dtype=np.float32) -> Buffer:
        """A device buffer of `size` elements whose contents are undefined until something writes it."""
        dtype = np.dtype(dtype)
        size = int(size)
        if size <= 0:
            raise ValueError(f"cannot allocate a buffer of {size} elements")
        self.check_size(size, dtype)
        with self._lock:
            self._check_open("allocating a buffer")
            return self._buffer(size, dtype)

    def _buffer(self, size: int, dtype: np.dtype) -> Buffer:
        if self._step_ended and self._capture is None:
            self.submit()
        block = self.pool.take(size, dtype)
        if self._capture is not None:
            self._capture.allocated.add(block)
        return Buffer(self, block)

    def release(self, block) -> None:
        if self.closed:
            return
        with self._lock:
            block.in_use = False
            self.pool.give_back(block)

    def upload(self, array: np.ndarray) -> Buffer:
        """A device buffer holding `array` (already of a supported dtype), copied up at the next submission."""
        buffer = self.alloc(array.size, array.dtype)
        self.upload_into(buffer, array)
        return buffer

    def upload_into(self, buffer: Buffer, array: np.ndarray) -> None:
        """Overwrite `buffer` with `array` (same size), copied up at the next submission.

        The host writes a staging block that nothing recorded or running uses, now; the copy to the device is
        recorded."""
        data = np.ascontiguousarray(array).reshape(-1)
        with self._lock:
            self._check_open("copy_")
            if self._step_ended and self._capture is None:
                self.submit()
            staging = self.pool.take_staging(buffer.size, buffer.dtype)
            staging.handle.data()[:] = data  # host-visible, coherent memory
            self.pool.give_back(staging)  # idle once the copy has run: busy until then
            self._written(buffer)
            self._record(Copy(staging, buffer.block))

    def _forget(self, block) -> None:
        """A block is about to be destroyed: drop the kernels and recorded sequences bound to it."""
        self.algorithms.forget(block)
        self.queue.forget(block)

    def _evict_from_other_graphs(self, nbytes: int) -> None:
        """Idle pooled blocks of the other Graphs on this device go before the device is declared full. An engine
        busy in its own thread (its lock taken) is skipped rather than waited for, so two never wait on each other."""
        for other in engines_on(self.context):
            if other is self or not other._lock.acquire(blocking=False):
                continue
            try:
                while not self.context.fits(nbytes) and other.pool.evict_one():
                    pass
            finally:
                other._lock.release()
            if self.context.fits(nbytes):
                return

    # ---- recording -------------------------------------------------------------------------------------------
    def _record(self, item) -> None:
        self.recorder.record(item)
        if len(self.recorder) >= MAX_PENDING and self._capture is None:
            self.submit()

    def _written(self, buffer: Buffer) -> None:
        buffer.version += 1
        if self._capture is not None:
            self._capture.written.setdefault(id(buffer), CapturedWork.weak(buffer))

    def dispatch(self, variant, inputs, outputs, push, grid, workgroup: int = WORKGROUP, constants: tuple = ()):
        """Record one dispatch. Bindings are `inputs` then `outputs`, in order; `outputs` are written.
        `workgroup` (a power of two) is the shader's WG specialization constant (constant_id 0); `constants` (ints)
        are constant_id 1, 2, ... Returns (its Launch, its push words, their bytes), for a launch plan."""
        words = push_constants(push)
        with self._lock:
            self._check_open("a kernel dispatch")
            launch = self.algorithms.launch(variant, tuple(grid), workgroup, tuple(int(c) for c in constants),
                                            len(words))
            data = words.tobytes()
            self._dispatch(launch, inputs, outputs, words, data)
            return launch, words, data

    def _dispatch(self, launch, inputs, outputs, words, data) -> None:
        reads, writes = tuple([b.block for b in inputs]), tuple([b.block for b in outputs])
        serial, algorithm = self.algorithms.get(launch, reads + writes, words)
        for buffer in outputs:
            self._written(buffer)
        self._record(Dispatch(algorithm, words, reads, writes, (serial, data)))

    def run_plan(self, operands: list, out_layouts, made, steps) -> list:
        """A launch plan's buffers and work (vkloss/plans.py): the outputs and the buffers it makes (sizes and
        dtypes already checked, uploads' data), then its steps on the buffers by role. Returns those buffers."""
        with self._lock:
            self._check_open("a kernel dispatch")
            buffers = operands + [self._buffer(*layout) for layout in out_layouts]
            for how in made:
                buffers.append(self._buffer(how[1], how[2]) if how[0] == "alloc" else self.upload(how[1]))
            for step in steps:
                if step[0] == "dispatch":
                    _, launch, reads, writes, words, data = step
                    self._dispatch(launch, [buffers[i] for i in reads], [buffers[i] for i in writes], words, data)
                else:
                    target = buffers[step[2]]
                    self._written(target)
                    self._record(Copy(buffers[step[1]].block, target.block))
            return buffers

    def copy(self, source: Buffer, target: Buffer) -> None:
        """Record a copy of `source` into `target` (same size and dtype) by the device's copy engine."""
        if (source.size, source.dtype) != (target.size, target.dtype):
            raise ValueError(f"copy: {source.size} {source.dtype} elements into {target.size} {target.dtype}")
        with self._lock:
            self._check_open("a copy")
            self._written(target)
            self._record(Copy(source.block, target.block))

    def end_of_step(self) -> None:
        """A training step ended: submit its work at the next host read, allocation or upload, so the step's
        buffers are back in the pool when the next step asks for them."""
        self._step_ended = True

    # ---- host copies -----------------------------------------------------------------------------------------
    def read_async(self, buffers: list[Buffer]) -> PendingRead:
        """Host copies of the buffers as they are after all recorded work, copied by the next submission (or
        already on the host, or already on their way, at this version)."""
        with self._lock:
            self._check_open("reading a tensor")
            if self._capture is not None:
                raise CaptureError("a captured step cannot copy a value to the host inside it: return the tensor "
                                   "from the step, and read it (item_async(), numpy()) after the step's call")
            jobs = []
            for buffer in buffers:
                if buffer.host_version == buffer.version:
                    jobs.append(CopyJob.ready(buffer.host))
                elif buffer.copy_job is not None and buffer.copy_job.version == buffer.version:
                    jobs.append(buffer.copy_job)
                else:
                    job = buffer.copy_job = CopyJob(buffer, buffer.version,
                                                    self.pool.take_staging(buffer.size, buffer.dtype))
                    jobs.append(job)
                    self._jobs.append(job)
                    self._record(Copy(buffer.block, job.staging))
            return PendingRead(self, jobs)

    def read(self, buffers: list[Buffer]) -> list[np.ndarray]:
        """Host copies of the buffers' contents after all recorded work."""
        return self.read_async(buffers).result()

    def poll(self, jobs: list[CopyJob]) -> bool:
        """Whether every job's values have arrived, without waiting: submits the work they wait on if it is only
        recorded, then asks the fence."""
        with self._lock:
            if all(job.done for job in jobs):
                return True
            if self.closed:
                return True  # lost: result() says so
            if not all(job.submitted for job in jobs):
                self.submit()
            while self.queue.in_flight and self.queue.oldest_complete():
                self._finish_oldest()
            return all(job.done for job in jobs)

    def finish(self, jobs: list[CopyJob]) -> None:
        """Wait until every job's values have arrived."""
        with self._lock:
            if all(job.done for job in jobs):
                return
            if not self.closed:
                if not all(job.submitted for job in jobs):
                    self.submit()
                while self.queue.in_flight and not all(job.done for job in jobs):
                    self._finish_oldest()  # oldest first: a later step still in flight goes on running
            if not all(job.done for job in jobs):
                raise RuntimeError("the read was lost: its Graph was closed before the values were copied")

    # ---- submitting ------------------------------------------------------------------------------------------
    def submit(self, timed: bool = False) -> None:
        """Submit everything recorded, without waiting for it (after waiting for the submissions before it, if
        they still run). `timed`: in a sequence of its own with GPU timestamps (see flush)."""
        with self._lock:
            if self._capture is not None:
                raise CaptureError("a captured step cannot wait for the device inside it (a flush, a host read, or "
                                   "memory that only a flush would free)")
            self._step_ended = False
            if not len(self.recorder):
                return
            items, blocks = self.recorder.take()
            jobs, self._jobs = self._jobs, []
            self.wait()
            for job in jobs:
                job.submitted = True
            self.queue.submit(items, blocks, jobs, timed=timed)

    def wait(self, keep: int = 0) -> None:
        """Wait for the submissions in flight, oldest first, until `keep` are left, and hand their copies to the
        host."""
        with self._lock:
            while len(self.queue.in_flight) > keep:
                self._finish_oldest()

    def _finish_oldest(self) -> None:
        """Wait for the oldest submission in flight and hand its copies to the host."""
        jobs, seconds = self.queue.wait()
        if seconds is not None:
            self.last_gpu_seconds = seconds
        for job in jobs:
            staging = job.staging
            job.take()
            self.pool.give_back(staging)

    # ---- captured steps --------------------------------------------------------------------------------------
    def begin_capture(self) -> None:
        """From now on, record a step for replay: what is recorded so far is submitted first, on its own."""
        with self._lock:
            self._check_open("capturing a step")
            self.submit()
            self._capture = StepRecording()

    def end_capture(self, outputs: list[Buffer], checks: list[Buffer]) -> CapturedWork:
        """The step recorded since begin_capture, with a host copy of each of `outputs` and `checks` at its end;
        every block it uses pinned until `release_capture`."""
        with self._lock:
            recording = self._capture
            self._capture = None
            self._step_ended = False
            # endings, each with staging blocks of its own, taken in turn: a replay's copies land where the replay
            # before it (maybe still in flight, its values not yet taken) did not. Made while the step's items are
            # still recorded, so no staging block they use is taken for them.
            endings = [self._ending(outputs, checks) for _ in range(queue_module.DEPTH)]
            items, blocks = self.recorder.take()
            work = CapturedWork(items, blocks, list(recording.written.values()), endings)
            for block in work.pinned_blocks():
                self.pool.pin(block, work)
            return work

    def _ending(self, outputs: list[Buffer], checks: list[Buffer]) -> Ending:
        """A captured step's host copies of `outputs` and `checks` into new staging blocks."""
        out = [(CapturedWork.weak(buffer), self.pool.take_staging(buffer.size, buffer.dtype)) for buffer in outputs]
        counts = [self.pool.take_staging(buffer.size, buffer.dtype) for buffer in checks]
        sources = tuple(dict.fromkeys(buffer.block for buffer in (*outputs, *checks)))
        stagings = tuple(staging for _, staging in out) + tuple(counts)
        copies = [Copy(buffer.block, staging) for buffer, staging in zip((*outputs, *checks), stagings)]
        items = ([Barrier(sources)] if sources else []) + copies + ([Barrier(stagings, True)] if stagings else [])
        return Ending(items, list(sources + stagings), out, counts)

    def abort_capture(self) -> None:
        """The step failed while it was recorded: what it recorded stays recorded, to run as eager work would."""
        with self._lock:
            self._capture = None

    def capturing(self) -> bool:
        return self._capture is not None

    def made_in_capture(self, buffer: Buffer) -> bool:
        return self._capture is not None and buffer.block in self._capture.allocated

    def replay(self, work: CapturedWork) -> tuple[list, list]:
        """Submit a captured step after what is recorded (copy_ into its inputs, ...), in one submission, while the
        replay before it may still run (queue.py: the device then goes on to this one without waiting for the
        host). Returns this replay's host copies: one CopyJob per output, and one per check count."""
        with self._lock:
            self._check_open("a captured step")
            prefix, prefix_blocks = self.recorder.take()
            ending = work.next_ending()
            shared = tuple(block for block in prefix_blocks if block in work.block_set)
            items = prefix + ([Barrier(shared)] if shared else []) + work.items + ending.items
            blocks = prefix_blocks + work.blocks + ending.blocks
            jobs, self._jobs = self._jobs, []
            self.wait(keep=queue_module.DEPTH - 1)
            # after the work in flight on the queue: a barrier on every block both use
            running = self.queue.blocks_in_flight()
            after = tuple(dict.fromkeys(block for block in blocks if block in running))
            if after:
                items = [Barrier(after)] + items
            for ref in work.written:  # the replay writes them: older host values go stale
                buffer = ref()
                if buffer is not None:
                    buffer.version += 1
            outputs = []
            for ref, staging in ending.outputs:
                buffer = ref()
                job = CopyJob(buffer, buffer.version if buffer is not None else 0, staging)
                if buffer is not None:
                    buffer.copy_job = job
                outputs.append(job)
            checks = [CopyJob(None, 0, staging) for staging in ending.checks]
            for job in (*jobs, *outputs, *checks):
                job.submitted = True
            self._step_ended = False
            self.queue.submit(items, blocks, jobs + outputs + checks, overlap=True)
            return outputs, checks

    def release_capture(self, work: CapturedWork) -> None:
        """The captured step is gone: its blocks go back to the pool (those no buffer holds)."""
        if self.closed:
            return
        with self._lock:
            for block in work.pinned_blocks():
                if block.serial in self.pool.blocks:
                    self.pool.unpin(block, work)

    def pending(self, jobs: list[CopyJob]) -> PendingRead:
        """A PendingRead over jobs already recorded or submitted (a captured step's)."""
        return PendingRead(self, jobs)

    def flush(self, timed: bool = False) -> float | None:
        """Run everything recorded and wait for it. `timed`: return the seconds the device spent on it, from
        Vulkan timestamps around the whole submission (None where the device cannot time compute work)."""
        with self._lock:
            timed = timed and self.device.timestamp_period_ns > 0
            self.last_gpu_seconds = None
            self.submit(timed=timed)
            self.wait()
            return self.last_gpu_seconds

    def close(self) -> None:
        """Run what is recorded, then free this engine's buffers, kernels and sequences. The device stays."""
        with self._lock:
            if self.closed:
                return
            try:
                self.flush()
            finally:
                try:
                    while self.queue.wait() is not None:  # an interrupted flush may have left some in flight
                        pass
                finally:
                    self.closed = True
                    self._jobs = []
                    self.algorithms.clear()
                    self.queue.close()
                    self.pool.destroy_all()
