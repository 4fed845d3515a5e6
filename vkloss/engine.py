"""Buffers, cached algorithms, and recording dispatches into submissions that are free of hazards.

The only module that imports kp. Work is recorded lazily: `dispatch` and `upload` append to a pending list, and
`read` (or a full list) flushes it. Flushing splits the list into as few kp Sequences as the synchronization
rules allow, because kp 0.9.0 records before each dispatch only a transfer-to-compute barrier:

- read-after-write or write-after-write on a small buffer inside one sequence: record an OpTensorSyncLocal of the
  produced buffer between the two dispatches. Its compute-to-transfer barrier chains with the transfer-to-compute
  barrier kp records before the next dispatch, which the validation layer accepts (a small token tensor does not:
  the memory dependency must name the buffer). The chain is also an execution dependency for all earlier work, so
  it settles write-after-read hazards too. Its cost is a copy of that buffer, so only small buffers go this way.
- anything else (a large produced buffer, a write after a read or after an upload): end the sequence and start a
  new one. `eval` waits for the fence, a submission boundary the layer accepts.
"""
from __future__ import annotations

import bisect
import itertools
import threading
from collections import OrderedDict

import numpy as np

import kp

from .device import DeviceInfo
from .errors import DeviceMemoryError
from . import shaders

WORKGROUP = 256  # invocations per workgroup; a power of two (the tree reductions rely on it)
SYNC_LOCAL_MAX_BYTES = 256 * 1024  # above this, a submission boundary is cheaper than copying the buffer
MAX_PENDING = 1024  # flush on our own after this many recorded items, so a loop that never reads stays bounded
ALGORITHM_CACHE_SIZE = 1024
POOL_MAX_BYTES = 256 * 1024 * 1024

_DTYPES = {np.dtype(np.float32): "float32", np.dtype(np.uint32): "uint32", np.dtype(np.int32): "int32"}


class _Block:
    """One kp tensor (device buffer + host staging). `serial` never repeats, unlike id()."""

    __slots__ = ("kp", "serial", "size", "dtype", "nbytes", "released")

    def __init__(self, kp_tensor, serial: int, size: int, dtype: np.dtype):
        self.kp, self.serial, self.size, self.dtype = kp_tensor, serial, size, dtype
        self.nbytes = size * dtype.itemsize
        self.released = 0  # when it last went back to the pool (the engine's release clock)


class Buffer:
    """A device buffer of `size` elements. Goes back to the engine's pool when nothing refers to it."""

    __slots__ = ("engine", "block", "host_valid", "host_sync_recorded", "__weakref__")

    def __init__(self, engine: "Engine", block: _Block):
        self.engine = engine
        self.block = block
        self.host_valid = False  # the staging copy equals the device copy
        # A recorded SyncLocal copies the latest write to staging: no second copy is needed to read it (and a
        # second copy into the same staging buffer in one sequence would itself be a write-after-write hazard).
        self.host_sync_recorded = False

    @property
    def size(self) -> int:
        return self.block.size

    @property
    def nbytes(self) -> int:
        return self.block.nbytes

    @property
    def serial(self) -> int:
        return self.block.serial

    @property
    def dtype(self) -> np.dtype:
        return self.block.dtype

    def __del__(self):
        try:
            self.engine._release(self.block)
        except Exception:  # interpreter shutdown: the engine may already be gone
            pass


class _Upload:
    __slots__ = ("buffer",)

    def __init__(self, buffer):
        self.buffer = buffer

    def op(self):
        return kp.OpTensorSyncDevice([self.buffer.block.kp])


class _SyncLocal:
    __slots__ = ("buffers",)

    def __init__(self, buffers):
        self.buffers = list(buffers)

    def op(self):
        return kp.OpTensorSyncLocal([b.block.kp for b in self.buffers])


class _Dispatch:
    __slots__ = ("algorithm", "push", "inputs", "outputs")

    def __init__(self, algorithm, push, inputs, outputs):
        self.algorithm, self.push, self.inputs, self.outputs = algorithm, push, inputs, outputs

    def op(self):
        # Always pass push constants: without them kp reuses whatever was pushed last.
        return kp.OpAlgoDispatch(self.algorithm, self.push)


class _Segment:
    """Items for one kp Sequence, with what they touched since the last barrier that covers it."""

    def __init__(self):
        self.items = []
        self.unsynced_writes: dict[int, Buffer] = {}  # written by a dispatch, no barrier for it yet
        self.reads: set[int] = set()  # read by a dispatch since the last execution barrier
        self.uploads: set[int] = set()  # transfer-written in this segment
        # Buffers whose host staging a SyncLocal in this segment wrote: kp's barriers guard the device buffer, not
        # the staging one, so a second copy into the same staging buffer needs a new segment.
        self.staged: set[int] = set()
        self.touched: set[int] = set()  # every buffer an item of this segment uses


def push_constants(values) -> np.ndarray:
    """Push constants as one uint32 array: ints as they are (negatives two's complement), floats bit-cast.

    kp takes push constants only as a numpy array of one 4-byte dtype; a list turns integers into floats."""
    words = np.empty(len(values), np.uint32)
    for i, v in enumerate(values):
        if isinstance(v, (float, np.floating)):
            words[i] = np.array(v, np.float32).view(np.uint32)
        else:
            words[i] = np.array(int(v), np.int64).astype(np.uint32) if v < 0 else int(v)
    return words


class Engine:
    """Owns one kp.Manager: allocates buffers, caches algorithms, records and flushes dispatches."""

    def __init__(self, device: DeviceInfo):
        self.device = device
        self.manager = kp.Manager(device.index)
        self.max_groups_x = min(65535, device.max_workgroup_count[0])
        self.max_groups_y = min(65535, device.max_workgroup_count[1])
        self._serials = itertools.count(1)
        self._release_clock = itertools.count(1)
        self._pool: dict[tuple[int, str], list[_Block]] = {}
        self._pool_bytes = 0
        self._algorithms: OrderedDict[tuple, object] = OrderedDict()
        self._algorithms_by_block: dict[int, set[tuple]] = {}
        self._segments = [_Segment()]
        self._pending = 0
        self._step_ended = False  # flush before the next allocation (see end_of_step)
        self._lock = threading.RLock()
        self.stats = {"submissions": 0, "dispatches": 0, "sync_local_barriers": 0, "algorithms_created": 0,
                      "buffers_created": 0, "device_bytes": 0, "peak_device_bytes": 0}
        self.closed = False

    # ---- buffers -------------------------------------------------------------------------------------------
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
            if self._step_ended:
                self.flush()
            free = self._pool.get((size, _DTYPES[dtype]))
            if free:
                # the oldest free block of this size: a loop that allocates in the same order every step gets the
                # same buffers every step, hence the same cached algorithms
                block = free.pop()
                self._pool_bytes -= block.nbytes
            else:
                zeros = np.zeros(size, dtype)
                kt = self.manager.tensor(zeros) if dtype == np.float32 else self.manager.tensor_t(zeros)
                block = _Block(kt, next(self._serials), size, dtype)
                self.stats["buffers_created"] += 1
                # what this engine holds on the device, buffers in use and pooled alike
                self.stats["device_bytes"] += block.nbytes
                self.stats["peak_device_bytes"] = max(self.stats["peak_device_bytes"], self.stats["device_bytes"])
            return Buffer(self, block)

    def upload(self, array: np.ndarray) -> Buffer:
        """A device buffer holding `array` (already of a supported dtype), copied up at the next flush."""
        buf = self.alloc(array.size, array.dtype)
        self.upload_into(buf, array)  # which makes the array flat and contiguous
        return buf

    def upload_into(self, buf: Buffer, array: np.ndarray) -> None:
        """Overwrite `buf` with `array` (same size), copied up at the next flush."""
        with self._lock:
            if any(buf.serial in s.touched for s in self._segments):
                self.flush()  # recorded work still uses this buffer (or its staging copy, written below at once)
            buf.block.kp.data()[:] = np.ascontiguousarray(array).reshape(-1)  # the staging memory, host-visible
            buf.host_valid, buf.host_sync_recorded = True, False
            self._record(_Upload(buf))

    def _release(self, block: _Block) -> None:
        if self.closed:
            return
        with self._lock:
            block.released = next(self._release_clock)
            free = self._pool.setdefault((block.size, _DTYPES[block.dtype]), [])
            free.insert(bisect.bisect(free, -block.serial, key=lambda b: -b.serial), block)  # newest first
            self._pool_bytes += block.nbytes
            while self._pool_bytes > POOL_MAX_BYTES:
                self._evict_one()

    def _evict_one(self) -> None:
        # The block released longest ago: leftovers of earlier work go first, and a training step's buffers, released
        # and reused every step, stay (evicting the largest instead recreated a step's gradient buffer every step).
        key, block = min(((k, b) for k, free in self._pool.items() for b in free), key=lambda kb: kb[1].released)
        self._pool[key].remove(block)
        if not self._pool[key]:
            del self._pool[key]
        self._pool_bytes -= block.nbytes
        self.stats["device_bytes"] -= block.nbytes
        # Algorithms hold their tensors alive: drop those bound to this block, then the block itself.
        for akey in self._algorithms_by_block.pop(block.serial, ()):
            self._algorithms.pop(akey, None)
        block.kp.destroy()

    # ---- kernels -------------------------------------------------------------------------------------------
    def grid(self, groups: int) -> tuple[int, int, int]:
        """Workgroup counts for `groups` workgroups: at most 65535 (or the device's limit) along x, the rest on y."""
        groups = max(1, int(groups))
        x = min(groups, self.max_groups_x)
        y = -(-groups // x)
        if y > self.max_groups_y:
            raise DeviceMemoryError(f"{groups:,} workgroups exceed the device's dispatch limit "
                                    f"{self.max_groups_x} x {self.max_groups_y}")
        return (x, y, 1)

    def reduction_workgroup(self, items: int, bytes_touched: int) -> int:
        """Workgroup size for a kernel in which one workgroup reduces `items` values spanning `bytes_touched` bytes.

        GPUs get wide workgroups. A CPU implementation (lavapipe) runs a workgroup's SIMD batches as coroutines
        switched at every barrier, each batch striding across the whole range: a wide workgroup pays off there only
        when every invocation has many items and the range stays in cache (measured: up to 4x either way)."""
        if self.device.type != "cpu":
            return WORKGROUP
        workgroup = 32
        if bytes_touched <= 256 * 1024:
            while workgroup < WORKGROUP and items // (2 * workgroup) >= 16:
                workgroup *= 2
        return workgroup

    def groups_for(self, invocations: int, workgroup: int = WORKGROUP) -> tuple[int, int, int]:
        return self.grid(-(-int(invocations) // workgroup))

    def _algorithm(self, variant: shaders.Variant, buffers: list[Buffer], grid, push: np.ndarray, workgroup: int):
        key = (variant, tuple(b.serial for b in buffers), grid, len(push), workgroup)
        algo = self._algorithms.get(key)
        if algo is not None:
            self._algorithms.move_to_end(key)
            return algo
        spirv = shaders.load(variant)
        declared = shaders.binding_count(spirv)
        if declared != len(buffers):
            # kp would bind them anyway, and the shader would read or write past what it was given
            raise ValueError(f"{variant.name} declares {declared} buffer bindings but was given {len(buffers)}")
        algo = self.manager.algorithm([b.block.kp for b in buffers], spirv, list(grid),
                                      np.array([workgroup], np.uint32), push)
        self.stats["algorithms_created"] += 1
        self._algorithms[key] = algo
        for b in buffers:
            self._algorithms_by_block.setdefault(b.serial, set()).add(key)
        while len(self._algorithms) > ALGORITHM_CACHE_SIZE:
            old_key, _ = self._algorithms.popitem(last=False)
            for serial in old_key[1]:
                keys = self._algorithms_by_block.get(serial)
                if keys is not None:
                    keys.discard(old_key)
        return algo

    def dispatch(self, variant: shaders.Variant, inputs: list[Buffer], outputs: list[Buffer], push, grid,
                 workgroup: int = WORKGROUP) -> None:
        """Record one dispatch. Bindings are `inputs` then `outputs`, in order; `outputs` are written.
        `workgroup` (a power of two) is the shader's WG specialization constant."""
        words = push_constants(push)
        with self._lock:
            algo = self._algorithm(variant, list(inputs) + list(outputs), tuple(grid), words, workgroup)
            self._record(_Dispatch(algo, words, list(inputs), list(outputs)))
            # after recording: a barrier copy recorded before this dispatch holds the old values, not these
            for b in outputs:
                b.host_valid = b.host_sync_recorded = False

    # ---- recording and flushing ----------------------------------------------------------------------------
    def _new_segment(self) -> _Segment:
        seg = _Segment()
        self._segments.append(seg)
        return seg

    def _record(self, item) -> None:
        with self._lock:
            seg = self._segments[-1]
            if isinstance(item, _Upload):
                b = item.buffer
                if b.serial in seg.reads or b.serial in seg.unsynced_writes:
                    seg = self._new_segment()
                seg.uploads.add(b.serial)
            elif isinstance(item, _Dispatch):
                touched = item.inputs + item.outputs
                if any(o.serial in seg.reads or o.serial in seg.uploads for o in item.outputs):
                    seg = self._new_segment()  # write after read, or after an upload: needs a boundary
                else:
                    dirty = list({b.serial: b for b in touched if b.serial in seg.unsynced_writes}.values())
                    small = sum(b.nbytes for b in dirty) <= SYNC_LOCAL_MAX_BYTES
                    if dirty and small and not any(b.serial in seg.staged for b in dirty):
                        seg.items.append(_SyncLocal(dirty))
                        seg.staged.update(b.serial for b in dirty)
                        seg.touched.update(b.serial for b in dirty)
                        self.stats["sync_local_barriers"] += 1
                        for b in dirty:
                            del seg.unsynced_writes[b.serial]
                            b.host_sync_recorded = True
                        seg.reads.clear()  # the barrier chain orders every earlier dispatch before the next
                    elif dirty:
                        seg = self._new_segment()
                seg.reads.update(b.serial for b in item.inputs)
                seg.unsynced_writes.update((b.serial, b) for b in item.outputs)
            seg.items.append(item)
            seg.touched.update(b.serial for b in ([item.buffer] if isinstance(item, _Upload)
                                                  else item.inputs + item.outputs))
            self._pending += 1
            if self._pending >= MAX_PENDING:
                self.flush()

    def end_of_step(self) -> None:
        """A training step ended: submit its work at the next host read, or at the latest before the next
        allocation, so the step's buffers are back in the pool when the next step asks for them."""
        self._step_ended = True

    def flush(self, read_back: list[Buffer] = ()) -> None:
        """Submit everything recorded, each segment as one sequence, and copy `read_back` to the host."""
        with self._lock:
            self._step_ended = False
            seg = self._segments[-1]
            stale = [b for b in {b.serial: b for b in read_back}.values()
                     if not b.host_valid and not b.host_sync_recorded]
            if any(b.serial in seg.staged for b in stale):
                seg = self._new_segment()
            if stale:
                seg.items.append(_SyncLocal(stale))
                seg.touched.update(b.serial for b in stale)
                for b in stale:
                    b.host_sync_recorded = True
            segments = [s for s in self._segments if s.items]
            self._segments = [_Segment()]
            self._pending = 0
            for s in segments:
                seq = self.manager.sequence()
                for item in s.items:
                    seq.record(item.op())
                    if isinstance(item, _Dispatch):
                        self.stats["dispatches"] += 1
                seq.eval()
                self.stats["submissions"] += 1
                for item in s.items:
                    if isinstance(item, _SyncLocal):
                        for b in item.buffers:
                            if b.host_sync_recorded:  # not written again after this copy
                                b.host_valid, b.host_sync_recorded = True, False

    def read(self, buffers: list[Buffer]) -> list[np.ndarray]:
        """Host copies of the buffers' contents after all recorded work, in one flush."""
        with self._lock:
            if any(not b.host_valid for b in buffers):
                self.flush(buffers)
            return [np.array(b.block.kp.data(), copy=True) for b in buffers]

    def live_counts(self) -> dict:
        with self._lock:
            return {"algorithms": len(self._algorithms), "pooled_buffers": sum(len(v) for v in self._pool.values()),
                    "pooled_bytes": self._pool_bytes}

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.flush()
            self.closed = True
            self._algorithms.clear()
            self._algorithms_by_block.clear()
            self._pool.clear()
            self.manager.destroy()
