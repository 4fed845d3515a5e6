"""Buffers, cached algorithms, and recording dispatches into submissions that are free of hazards.

The only module that imports kp, and it needs kp 0.9.0 as tools/bootstrap.sh builds it (tools/kp_patch.py: a
fence per Sequence, re-recordable Sequences, an asynchronous `eval_async()`, and `OpMemoryBarrier` in Python).

- **One device context per device and process** (`context`): the kp.Manager is made on first use and never
  destroyed before exit. NVIDIA's driver crashes when a Vulkan instance is made again after one was destroyed, so a
  Graph's `close()` frees its buffers and kernels, never the device.
- **Buffers** are device-only (no staging copy, never filled from the host at allocation). A buffer that the host
  writes gets two small host-visible staging buffers, used in turn, so that filling one never waits for the
  submission that still reads the other; a buffer the host reads gets one to copy into. Freed buffers go to a pool
  whose budget follows the device's memory; a request beyond what is left raises DeviceMemoryError before kp is
  asked (kp would ignore the failed allocation).
- **Recording** is lazy: `dispatch`, `upload_into` and `read_async` append items; a flush records them into one
  kp Sequence. kp 0.9.0 records only a transfer-to-compute barrier before each dispatch, so the engine tracks what
  each item reads and writes since the last barrier and records a buffer memory barrier (compute and transfer,
  writes made visible to every later access) before any item that reads after a write, or writes after any access.
- **Submitting** never waits unless the host needs a value: at most one submission is in flight, and the next one
  waits for its fence first (a submission boundary, which also orders the two submissions' buffers). A flush whose
  items repeat an earlier flush exactly (same kernels, buffers and push constants: a training step) replays that
  flush's recorded Sequence instead of recording it again. Values that change per step (an optimizer's step
  count) travel in buffers, not push constants, so a step stays a replay.
"""
from __future__ import annotations

import atexit
import bisect
import ctypes
import itertools
import os
import threading
import weakref
from collections import OrderedDict

import numpy as np

import kp

from .device import DeviceInfo
from .errors import DeviceMemoryError
from . import shaders

WORKGROUP = 256  # invocations per workgroup; a power of two (the tree reductions rely on it)
# Loop iterations per invocation and pass in a row kernel: each sums that many terms in float32 one after another
# (2^11 keeps cross-entropy at 2^18 classes within 2e-5 of float64; 2^13 gave 3e-5), far under lavapipe's silent
# limit of about 65,535 per invocation.
MAX_LOOP_PER_PASS = 1 << 11
LONG_ROW_PER_INVOCATION = 8  # elements (or vec4s) per invocation from which a GPU row kernel takes its widest workgroup
ROW_ONCE_VALUES = (2, 8)  # vec4s each invocation of a registers-held row keeps: 8 covers 32,768 classes at 1,024
MAX_PENDING = 1024  # submit on our own after this many recorded items, so a loop that never reads stays bounded
ALGORITHM_CACHE_SIZE = 1024
REPLAY_CACHE_SIZE = 16  # recorded flushes kept for replay (a training step alternates between two at most)
KP_PATCH_LEVEL = 4  # tools/kp_patch.py's PATCH_LEVEL
# Share of the device's largest device-local heap that vkloss may hold (in use and pooled), and of that the share
# the pool of freed buffers may keep. VKLOSS_MEMORY_BUDGET (bytes) overrides the first.
MEMORY_SHARE = 0.9
POOL_SHARE = 0.5

# Vulkan's flag bits, for kp.OpMemoryBarrier.
_SHADER_READ, _SHADER_WRITE, _TRANSFER_READ, _TRANSFER_WRITE, _HOST_READ = 0x20, 0x40, 0x800, 0x1000, 0x2000
_COMPUTE_STAGE, _TRANSFER_STAGE, _HOST_STAGE = 0x800, 0x1000, 0x4000
_ANY_WRITE = _SHADER_WRITE | _TRANSFER_WRITE
_ANY_ACCESS = _SHADER_READ | _SHADER_WRITE | _TRANSFER_READ | _TRANSFER_WRITE
_DEVICE_STAGES = _COMPUTE_STAGE | _TRANSFER_STAGE

_DTYPES = {np.dtype(np.float32): "float32", np.dtype(np.uint32): "uint32", np.dtype(np.int32): "int32"}


def _check_kp() -> None:
    level = getattr(kp, "vkloss_patch", None)
    if level != KP_PATCH_LEVEL:
        raise ImportError(f"vkloss needs kp 0.9.0 built with tools/kp_patch.py (level {KP_PATCH_LEVEL}); the "
                          f"installed kp has {'no patch' if level is None else f'level {level}'}. Run "
                          "tools/bootstrap.sh (or tools/build_kp.sh) to build it.")


_check_kp()


# ---- the device context ----------------------------------------------------------------------------------------
class DeviceContext:
    """One device's kp.Manager and the memory every Graph on it holds. Made once per device and process."""

    def __init__(self, device: DeviceInfo):
        self.device = device
        self.manager = kp.Manager(device.index)
        self.lock = threading.Lock()
        override = os.environ.get("VKLOSS_MEMORY_BUDGET", "").strip()
        self.budget = int(override) if override else int(device.device_memory * MEMORY_SHARE)
        self.used = 0  # bytes of device buffers that vkloss holds on this device, in use and pooled, all Graphs

    def reserve(self, nbytes: int, what: str) -> None:
        with self.lock:
            if self.used + nbytes > self.budget:
                raise DeviceMemoryError(
                    f"{what} needs {nbytes:,} bytes of device memory, but only {max(0, self.budget - self.used):,} "
                    f"of vkloss's budget of {self.budget:,} bytes on {self.device.name} are left "
                    f"({self.used:,} in use or pooled)")
            self.used += nbytes

    def give_back(self, nbytes: int) -> None:
        with self.lock:
            self.used -= nbytes


_contexts: dict[int, DeviceContext] = {}
_contexts_lock = threading.Lock()


def context(device: DeviceInfo) -> DeviceContext:
    """The process's context for `device`, made on first use."""
    with _contexts_lock:
        found = _contexts.get(device.index)
        if found is None:
            found = _contexts[device.index] = DeviceContext(device)
            # Never destroyed: keep one reference for the life of the process, past the interpreter's teardown
            # of module globals, so the Vulkan instance is torn down by the process's exit, not by kp.
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(found.manager))
        return found


def contexts_made() -> int:
    """How many device contexts this process has made (one per device used, however many Graphs)."""
    return len(_contexts)


_engines: "weakref.WeakSet[Engine]" = weakref.WeakSet()


@atexit.register
def _finish_in_flight_work() -> None:
    for engine in list(_engines):
        try:
            engine.wait()
        except Exception:
            pass


# ---- buffers ---------------------------------------------------------------------------------------------------
class _Block:
    """One device-only kp tensor, with host-visible staging tensors made when the host first writes or reads it.
    `serial` never repeats, unlike id()."""

    __slots__ = ("kp", "serial", "size", "dtype", "nbytes", "released", "upload_staging", "read_staging")

    def __init__(self, kp_tensor, serial: int, size: int, dtype: np.dtype):
        self.kp, self.serial, self.size, self.dtype = kp_tensor, serial, size, dtype
        self.nbytes = size * dtype.itemsize
        self.released = 0  # when it last went back to the pool (the engine's release clock)
        self.upload_staging = [None, None]  # two, used in turn (see Engine.upload_into)
        self.read_staging = None

    def destroy(self) -> None:
        for t in (self.kp, self.read_staging, *self.upload_staging):
            if t is not None:
                t.destroy()


class Buffer:
    """A device buffer of `size` elements. Goes back to the engine's pool when nothing refers to it."""

    __slots__ = ("engine", "block", "host_valid", "host_copy_recorded", "__weakref__")

    def __init__(self, engine: "Engine", block: _Block):
        self.engine = engine
        self.block = block
        self.host_valid = False  # the read staging copy equals the latest recorded value
        self.host_copy_recorded = False  # a recorded read copies the latest recorded value to the read staging

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


# ---- recorded items --------------------------------------------------------------------------------------------
# Each has `key` (what a replay compares), `reads` and `writes` (the kp tensors it touches, by a hashable name) and
# `op()`, the kp operation. Names: ("d", serial) a device buffer, ("u", serial, slot) an upload staging buffer,
# ("r", serial) a read staging buffer.
class _Upload:
    __slots__ = ("block", "slot", "key", "reads", "writes")

    def __init__(self, block: _Block, slot: int):
        # the block, not the Buffer: a tensor dropped before the submission goes back to the pool at once
        self.block, self.slot = block, slot
        self.key = ("u", block.serial, slot)
        self.reads, self.writes = [("u", block.serial, slot)], [("d", block.serial)]

    def op(self):
        return kp.OpTensorCopy([self.block.upload_staging[self.slot], self.block.kp])


class _Read:
    __slots__ = ("buffer", "key", "reads", "writes")

    def __init__(self, buffer: Buffer):
        self.buffer = buffer
        self.key = ("r", buffer.serial)
        self.reads, self.writes = [("d", buffer.serial)], [("r", buffer.serial)]

    def op(self):
        return kp.OpTensorCopy([self.buffer.block.kp, self.buffer.block.read_staging])


class _Copy:
    """A device-to-device copy (vkCmdCopyBuffer): the device's own copy, a bandwidth baseline."""

    __slots__ = ("source", "target", "key", "reads", "writes")

    def __init__(self, source: _Block, target: _Block):
        self.source, self.target = source, target
        self.key = ("c", source.serial, target.serial)
        self.reads, self.writes = [("d", source.serial)], [("d", target.serial)]

    def op(self):
        return kp.OpTensorCopy([self.source.kp, self.target.kp])


class _Dispatch:
    __slots__ = ("algorithm", "push", "key", "reads", "writes")

    def __init__(self, algorithm_serial: int, algorithm, push: np.ndarray, inputs, outputs):
        self.algorithm, self.push = algorithm, push
        self.key = ("k", algorithm_serial, push.tobytes())
        self.reads = [("d", b.serial) for b in inputs]
        self.writes = [("d", b.serial) for b in outputs]

    def op(self):
        # Always pass push constants: without them kp reuses whatever was pushed last.
        return kp.OpAlgoDispatch(self.algorithm, self.push)


class _Barrier:
    """Every earlier write of these tensors, by a shader or a copy, made visible to every later device access (and
    every earlier access ordered before later ones)."""

    __slots__ = ("tensors", "key", "to_host")

    def __init__(self, names, tensors, to_host: bool = False):
        self.tensors, self.to_host = tensors, to_host
        self.key = ("b", to_host, tuple(names))

    def op(self):
        if self.to_host:
            return kp.OpMemoryBarrier(self.tensors, _TRANSFER_WRITE, _HOST_READ, _TRANSFER_STAGE, _HOST_STAGE)
        return kp.OpMemoryBarrier(self.tensors, _ANY_WRITE, _ANY_ACCESS, _DEVICE_STAGES, _DEVICE_STAGES)


def ceil_div(a: int, b: int) -> int:
    """How many groups of b hold a things."""
    return -(-int(a) // int(b))


def push_constants(values) -> np.ndarray:
    """Push constants as one uint32 array: ints as they are (negatives two's complement), floats bit-cast.

    kp takes push constants only as a numpy array of one 4-byte dtype; a list turns integers into floats. An array
    already packed (kernels.Kernel.push_words, by the block's declared types) is taken as it is."""
    if isinstance(values, np.ndarray) and values.dtype == np.uint32:
        return values
    words = np.empty(len(values), np.uint32)
    for i, v in enumerate(values):
        if isinstance(v, (float, np.floating)):
            words[i] = np.array(v, np.float32).view(np.uint32)
        else:
            words[i] = np.array(int(v), np.int64).astype(np.uint32) if v < 0 else int(v)
    return words


class PendingRead:
    """Host copies of buffers that arrive when the submission that copies them completes (a Future's interface:
    `done()`, `result()`). `result()` waits only if the copy is still running or not yet submitted."""

    def __init__(self, engine: "Engine", buffers: list[Buffer]):
        self._engine = engine
        self._buffers = buffers  # dropped once the values are copied out, so the buffers can go back to the pool
        self._values: list[np.ndarray] | None = None
        self.submitted = False  # its copies are in the submission in flight: waiting for that one is enough

    def _take(self) -> None:
        self._values = [np.array(b.block.read_staging.data(), copy=True) for b in self._buffers]
        self._buffers = None

    def done(self) -> bool:
        return self._values is not None

    def result(self) -> list[np.ndarray]:
        if self._values is None:
            self._engine.wait() if self.submitted else self._engine.flush()
        if self._values is None:
            raise RuntimeError("the read was lost: its Graph was closed before the values were copied")
        return self._values


class Engine:
    """Allocates buffers, caches algorithms, records and submits dispatches for one Graph on one device."""

    def __init__(self, device: DeviceInfo):
        self.device = device
        self.context = context(device)
        self.manager = self.context.manager
        self.max_groups_x = min(65535, device.max_workgroup_count[0])
        self.max_groups_y = min(65535, device.max_workgroup_count[1])
        self.pool_max_bytes = int(self.context.budget * POOL_SHARE)
        self._serials = itertools.count(1)
        self._release_clock = itertools.count(1)
        self._blocks: dict[int, _Block] = {}  # every block this engine made and has not destroyed
        self._pool: dict[tuple[int, str], list[_Block]] = {}
        self._pool_bytes = 0
        self._algorithm_serials = itertools.count(1)
        self._algorithms: OrderedDict[tuple, tuple] = OrderedDict()  # key -> (serial, kp.Algorithm)
        self._algorithms_by_block: dict[int, set[tuple]] = {}
        self._replays: OrderedDict[tuple, object] = OrderedDict()  # a flush's item keys -> its recorded Sequence
        self._replays_by_block: dict[int, set[tuple]] = {}
        self._spare_sequences: list = []
        self._items: list = []
        self._access: dict[tuple, tuple[bool, bool]] = {}  # tensor name -> (written, read) since its last barrier
        self._pending_reads: list[PendingRead] = []
        # (sequence, the tensor names it uses, its PendingReads, its _Read items)
        self._in_flight = None
        self._step_ended = False  # submit before the next allocation or upload (see end_of_step)
        self._timed = None  # the timestamped sequence in flight, if any
        self.last_gpu_seconds: float | None = None
        self._lock = threading.RLock()
        self.stats = {"submissions": 0, "replays": 0, "dispatches": 0, "barriers": 0, "algorithms_created": 0,
                      "buffers_created": 0, "device_bytes": 0, "peak_device_bytes": 0, "staging_bytes": 0}
        self.closed = False
        _engines.add(self)

    def _check_open(self, what: str) -> None:
        if self.closed:
            raise RuntimeError(f"{what}: this Graph is closed")

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
            self._check_open("allocating a buffer")
            if self._step_ended:
                self.submit()
            free = self._pool.get((size, _DTYPES[dtype]))
            if free:
                # the oldest free block of this size: a loop that allocates in the same order every step gets the
                # same buffers every step, hence the same cached algorithms and the same replayable flushes
                block = free.pop()
                self._pool_bytes -= block.nbytes
            else:
                block = self._create(size, dtype)
            return Buffer(self, block)

    def _create(self, size: int, dtype: np.dtype) -> _Block:
        nbytes = size * dtype.itemsize
        what = f"a buffer of {size:,} {dtype} elements"
        while self._pool and self.context.used + nbytes > self.context.budget:
            if not self._evict_one():  # leftovers make room before the device is declared full
                self.flush()  # the pooled blocks are still used by recorded or running work
        if self.context.used + nbytes > self.context.budget:
            self._evict_from_other_graphs(nbytes)
        self.context.reserve(nbytes, what)
        try:
            # np.empty: nothing is filled on the host, and kp copies nothing into a storage (device-only) tensor
            kt = self.manager.tensor_t(np.empty(size, dtype), kp.TensorTypes.storage)
        except RuntimeError as e:  # the patched kp raises where vkAllocateMemory fails
            self.context.give_back(nbytes)
            raise DeviceMemoryError(f"{what} ({nbytes:,} bytes): the device refused the allocation ({e}); "
                                    f"vkloss holds {self.context.used:,} bytes on {self.device.name}") from None
        block = _Block(kt, next(self._serials), size, dtype)
        self._blocks[block.serial] = block
        self.stats["buffers_created"] += 1
        # what this engine holds on the device, buffers in use and pooled alike
        self.stats["device_bytes"] += block.nbytes
        self.stats["peak_device_bytes"] = max(self.stats["peak_device_bytes"], self.stats["device_bytes"])
        return block

    def _staging(self, block: _Block, data: np.ndarray):
        """A host-visible kp tensor holding `data`, of the block's size and dtype."""
        self.stats["staging_bytes"] += block.nbytes
        return self.manager.tensor_t(data, kp.TensorTypes.host)

    def upload(self, array: np.ndarray) -> Buffer:
        """A device buffer holding `array` (already of a supported dtype), copied up at the next submission."""
        buf = self.alloc(array.size, array.dtype)
        self.upload_into(buf, array)
        return buf

    def upload_into(self, buf: Buffer, array: np.ndarray) -> None:
        """Overwrite `buf` with `array` (same size), copied up at the next submission.

        The host writes one of the buffer's two staging buffers now; it waits only if both are still used by
        recorded or running work."""
        data = np.ascontiguousarray(array).reshape(-1)
        with self._lock:
            self._check_open("copy_")
            if self._step_ended:
                self.submit()
            block = buf.block
            slot = self._free_upload_slot(block)
            if slot is None:
                if any(("u", block.serial, s) in self._access for s in (0, 1)):
                    self.submit()
                self.wait()
                slot = self._free_upload_slot(block)
            if block.upload_staging[slot] is None:
                block.upload_staging[slot] = self._staging(block, data)  # made holding the data
            else:
                block.upload_staging[slot].data()[:] = data  # host-visible, coherent memory
            buf.host_valid = buf.host_copy_recorded = False
            self._record(_Upload(block, slot))

    def _free_upload_slot(self, block: _Block) -> int | None:
        busy = {s for s in (0, 1) if ("u", block.serial, s) in self._access}
        if self._in_flight is not None:
            busy |= {s for s in (0, 1) if ("u", block.serial, s) in self._in_flight[1]}
        free = [s for s in (0, 1) if s not in busy]
        return free[0] if free else None

    def _release(self, block: _Block) -> None:
        if self.closed:
            return
        with self._lock:
            block.released = next(self._release_clock)
            free = self._pool.setdefault((block.size, _DTYPES[block.dtype]), [])
            free.insert(bisect.bisect(free, -block.serial, key=lambda b: -b.serial), block)  # newest first
            self._pool_bytes += block.nbytes
            while self._pool_bytes > self.pool_max_bytes and self._evict_one():
                pass

    def _evict_one(self) -> bool:
        """Destroy the pooled block released longest ago that no recorded or running work uses; False if none.

        Leftovers of earlier work go first, and a training step's buffers, released and reused every step, stay
        (evicting the largest instead recreated a step's gradient buffer every step)."""
        busy = {name[1] for name in self._access}  # every tensor a recorded item uses is there until submitted
        if self._in_flight is not None:
            busy |= {name[1] for name in self._in_flight[1]}
        idle = [(k, b) for k, free in self._pool.items() for b in free if b.serial not in busy]
        if not idle:
            return False
        key, block = min(idle, key=lambda kb: kb[1].released)
        self._pool[key].remove(block)
        if not self._pool[key]:
            del self._pool[key]
        self._pool_bytes -= block.nbytes
        self._destroy(block)
        return True

    def _evict_from_other_graphs(self, nbytes: int) -> None:
        """Idle pooled blocks of the other Graphs on this device go before the device is declared full. An engine
        busy in its own thread (its lock taken) is skipped rather than waited for, so two never wait on each other."""
        for other in list(_engines):
            if other is self or other.context is not self.context or other.closed:
                continue
            if not other._lock.acquire(blocking=False):
                continue
            try:
                while self.context.used + nbytes > self.context.budget and other._evict_one():
                    pass
            finally:
                other._lock.release()
            if self.context.used + nbytes <= self.context.budget:
                return

    def _destroy(self, block: _Block) -> None:
        # Algorithms and recorded sequences hold their tensors alive: drop those bound to this block, then the block.
        for akey in self._algorithms_by_block.pop(block.serial, ()):
            self._algorithms.pop(akey, None)
        for rkey in self._replays_by_block.pop(block.serial, ()):
            sequence = self._replays.pop(rkey, None)
            if sequence is not None:
                sequence.destroy()
        del self._blocks[block.serial]
        self.stats["device_bytes"] -= block.nbytes
        self.stats["staging_bytes"] -= block.nbytes * sum(
            t is not None for t in (block.read_staging, *block.upload_staging))
        self.context.give_back(block.nbytes)
        block.destroy()

    # ---- kernels -------------------------------------------------------------------------------------------
    def grid(self, groups: int) -> tuple[int, int, int]:
        """Workgroup counts for `groups` workgroups: at most 65535 (or the device's limit) along x, the rest on y."""
        groups = max(1, int(groups))
        x = min(groups, self.max_groups_x)
        y = ceil_div(groups, x)
        if y > self.max_groups_y:
            raise DeviceMemoryError(f"{groups:,} workgroups exceed the device's dispatch limit "
                                    f"{self.max_groups_x} x {self.max_groups_y}")
        return (x, y, 1)

    def row_workgroup(self, items: int = 0) -> int:
        """Workgroup size for a kernel whose workgroups each reduce a stretch of `items` elements in a loop (a
        cross-entropy row, a block of BCE terms), then across the workgroup with barriers.

        GPUs get 256, or for rows of at least LONG_ROW_PER_INVOCATION items per invocation of it, the widest workgroup
        (largest_workgroup): a row kernel's workgroups are its rows, and few rows in workgroups of 256 keep too few
        loads in flight to use the device's bandwidth (measured on an NVIDIA H100: 64 x 128,256 classes, the step at
        0.23 of a copy's bandwidth, where 8,192 rows of 32,768 reached 0.90).

        A CPU implementation (lavapipe) runs a workgroup as SIMD batches of subgroup_size invocations,
        switched as coroutines at every barrier, each batch striding over the whole stretch: a workgroup of one batch
        never switches. Measured on lavapipe (8-wide): 2 to 3x faster than 32 for cross-entropy from 1,000 to
        200,000 classes and for BCE, and 32 beat 64 to 256 everywhere. It grows only where the loop would otherwise
        run more than MAX_LOOP_PER_PASS iterations a pass."""
        if self.device.type != "cpu":
            widest = self.largest_workgroup()
            return widest if items >= LONG_ROW_PER_INVOCATION * widest else WORKGROUP
        workgroup = self._simd_batch()
        while workgroup < WORKGROUP and items > workgroup * MAX_LOOP_PER_PASS:
            workgroup *= 2
        return workgroup

    def row_once(self, vectors: int):
        """For a row kernel that holds its row in registers and so reads it once (cross_entropy.comp MODE_ROW_ONCE):
        (workgroup size, four-float vectors per invocation) for a row of `vectors` vec4s, or None where the kernel that
        reads the row twice serves better: a row longer than one workgroup holds (ROW_ONCE_VALUES[-1] vectors per
        invocation, at most 1,024 invocations or the device's limit), and CPU implementations, where lavapipe runs
        a large workgroup as coroutines switched at every barrier (the row kernels' workgroup there is 8 to 32), and
        devices without subgroup shuffles, which its reductions use."""
        if self.device.type == "cpu" or not self.device.subgroup_shuffle:  # its reductions shuffle within subgroups
            return None
        limit = self.largest_workgroup()
        for values in ROW_ONCE_VALUES:
            workgroup = max(32, self.device.subgroup_size)  # whole subgroups
            while workgroup * values < vectors:
                workgroup *= 2
            if workgroup <= limit:
                return workgroup, values
        return None

    def wide_loads(self) -> bool:
        """Whether kernels move eight float32 values per access (shaders/include/wide.glsl): on CPU devices with
        64-bit integers in shaders, where lavapipe's cost is per access, not per byte. GPUs read a vec4 per lane at
        full bandwidth already."""
        return self.device.type == "cpu" and self.device.shader_int64

    def access_width(self, *sizes: int) -> int:
        """Float32 values a kernel over arrays of these sizes moves per access (shaders/include/access.glsl): eight
        where wide_loads() and every size is a multiple of 8, four (a vec4) where every size is a multiple of 4,
        else one."""
        if self.wide_loads() and all(size % 8 == 0 for size in sizes):
            return 8
        return 4 if all(size % 4 == 0 for size in sizes) else 1

    def largest_workgroup(self) -> int:
        """The widest one-dimensional workgroup the reductions (shaders/include/reduce.glsl) take here: a power of
        two up to 1,024, within the device's invocation and size limits and with its vec4 tree in shared memory."""
        limit = min(1024, self.device.max_workgroup_invocations, self.device.max_workgroup_size)
        workgroup = WORKGROUP
        while workgroup * 2 <= limit and (workgroup * 2 + 1) * 16 <= self.device.max_shared_memory:
            workgroup *= 2
        return workgroup

    def reduction_workgroup(self) -> int:
        """Workgroup size for a tree-sum pass (16 accesses per invocation, then the workgroup's tree): 256 on GPUs;
        one SIMD batch on a CPU implementation, which then never switches coroutines at the tree's barriers. Measured
        on lavapipe (8-wide, 2-core AMD EPYC), mean_all of 2^24 floats: 6.2 ms at 8 against 11.7 at 32; no slower
        from 2^16 to 2^20, with and without eight-float accesses."""
        return WORKGROUP if self.device.type != "cpu" else self._simd_batch()

    def _simd_batch(self) -> int:
        """How many invocations a CPU implementation runs as one SIMD batch: its subgroup size where that is a power
        of two from 4 to WORKGROUP, else 32."""
        size = self.device.subgroup_size
        return size if 4 <= size <= WORKGROUP and size & (size - 1) == 0 else 32

    def groups_for(self, invocations: int, workgroup: int = WORKGROUP) -> tuple[int, int, int]:
        return self.grid(ceil_div(invocations, workgroup))

    def _algorithm(self, variant: shaders.Variant, buffers: list[Buffer], grid, push: np.ndarray, workgroup: int,
                   constants: tuple = ()):
        key = (variant, tuple(b.serial for b in buffers), grid, len(push), workgroup, constants)
        found = self._algorithms.get(key)
        if found is not None:
            self._algorithms.move_to_end(key)
            return found
        spirv = shaders.load(variant)
        declared = shaders.binding_count(spirv)
        if declared != len(buffers):
            # kp would bind them anyway, and the shader would read or write past what it was given
            raise ValueError(f"{variant.name} declares {declared} buffer bindings but was given {len(buffers)}")
        algo = self.manager.algorithm([b.block.kp for b in buffers], spirv, list(grid),
                                      np.array([workgroup, *constants], np.uint32), push)
        self.stats["algorithms_created"] += 1
        found = self._algorithms[key] = (next(self._algorithm_serials), algo)
        for b in buffers:
            self._algorithms_by_block.setdefault(b.serial, set()).add(key)
        while len(self._algorithms) > ALGORITHM_CACHE_SIZE:
            old_key, _ = self._algorithms.popitem(last=False)
            for serial in old_key[1]:
                keys = self._algorithms_by_block.get(serial)
                if keys is not None:
                    keys.discard(old_key)
        return found

    def dispatch(self, variant: shaders.Variant, inputs: list[Buffer], outputs: list[Buffer], push, grid,
                 workgroup: int = WORKGROUP, constants: tuple = ()) -> None:
        """Record one dispatch. Bindings are `inputs` then `outputs`, in order; `outputs` are written.
        `workgroup` (a power of two) is the shader's WG specialization constant (constant_id 0); `constants` (ints)
        are constant_id 1, 2, ..."""
        words = push_constants(push)
        with self._lock:
            self._check_open("a kernel dispatch")
            serial, algo = self._algorithm(variant, list(inputs) + list(outputs), tuple(grid), words, workgroup,
                                           tuple(int(c) for c in constants))
            self._record(_Dispatch(serial, algo, words, inputs, outputs))
            for b in outputs:  # a copy to the host recorded before this dispatch holds the old values
                b.host_valid = b.host_copy_recorded = False

    def copy(self, source: Buffer, target: Buffer) -> None:
        """Record a copy of `source` into `target` (same size and dtype) by the device's copy engine."""
        if (source.size, source.dtype) != (target.size, target.dtype):
            raise ValueError(f"copy: {source.size} {source.dtype} elements into {target.size} {target.dtype}")
        with self._lock:
            self._check_open("a copy")
            self._record(_Copy(source.block, target.block))
            target.host_valid = target.host_copy_recorded = False

    # ---- recording and submitting --------------------------------------------------------------------------
    def _tensor(self, name):
        block = self._blocks[name[1]]
        return block.kp if name[0] == "d" else block.read_staging if name[0] == "r" else block.upload_staging[name[2]]

    def _record(self, item) -> None:
        # A barrier before the item for each tensor it reads after a write, or writes after any access, since that
        # tensor's last barrier.
        hazards = list(dict.fromkeys([name for name in item.reads if self._access.get(name, (False, False))[0]]
                                     + [name for name in item.writes if name in self._access]))
        if hazards:
            self._items.append(_Barrier(hazards, [self._tensor(n) for n in hazards]))
            self.stats["barriers"] += 1
            for name in hazards:
                del self._access[name]
        for name in item.reads:
            self._access[name] = (self._access.get(name, (False, False))[0], True)
        for name in item.writes:
            self._access[name] = (True, self._access.get(name, (False, False))[1])
        self._items.append(item)
        if len(self._items) >= MAX_PENDING:
            self.submit()

    def end_of_step(self) -> None:
        """A training step ended: submit its work at the next host read, allocation or upload, so the step's
        buffers are back in the pool when the next step asks for them."""
        self._step_ended = True

    def read_async(self, buffers: list[Buffer]) -> PendingRead:
        """Host copies of the buffers after all recorded work, copied by the next submission."""
        with self._lock:
            self._check_open("reading a tensor")
            pending = PendingRead(self, list(buffers))
            reads = []
            for b in {b.serial: b for b in buffers}.values():
                if b.host_valid or b.host_copy_recorded:
                    continue
                if b.block.read_staging is None:
                    b.block.read_staging = self._staging(b.block, np.empty(b.size, b.dtype))
                elif ("r", b.serial) in self._access:
                    self.submit()  # a recorded read of an older value still needs this staging buffer
                reads.append(_Read(b))
                self._record(reads[-1])
                b.host_copy_recorded = True
            if reads or any(not b.host_valid for b in buffers):
                self._pending_reads.append(pending)
            else:
                pending._take()
            return pending

    def read(self, buffers: list[Buffer]) -> list[np.ndarray]:
        """Host copies of the buffers' contents after all recorded work, in one flush."""
        return self.read_async(buffers).result()

    def submit(self, timed: bool = False) -> None:
        """Submit everything recorded as one kp Sequence, without waiting for it (after waiting for the one
        submitted before, if it still runs). `timed`: in a sequence of its own with GPU timestamps (see flush)."""
        with self._lock:
            self._step_ended = False
            if not self._items:
                if self._pending_reads:  # their copies are in the submission in flight
                    self.wait()
                    for pending in self._pending_reads:
                        pending._take()
                    self._pending_reads = []
                return
            items, names, reads = self._items, set(self._access), self._pending_reads
            self._items, self._access, self._pending_reads = [], {}, []
            staged = [(f"r{item.buffer.serial}", item.buffer.block.read_staging) for item in items
                      if isinstance(item, _Read)]
            if staged:  # the copies' writes made visible to the host's reads after the fence
                items.append(_Barrier([n for n, _ in staged], [t for _, t in staged], to_host=True))
            key = tuple(item.key for item in items)
            self.wait()
            sequence = None if timed else self._replays.get(key)
            if sequence is not None:
                self._replays.move_to_end(key)
                self.stats["replays"] += 1
            elif timed:
                sequence = self.manager.sequence(0, len(items))
                for item in items:
                    sequence.record(item.op())
                self._timed = sequence
            else:
                sequence = self._record_sequence(key, items, {name[1] for name in names})
            self.stats["dispatches"] += sum(isinstance(item, _Dispatch) for item in items)
            self.stats["submissions"] += 1
            # In flight before the call: a KeyboardInterrupt arrives between bytecodes, so after the submission, and
            # the engine still waits for it; one that arrives before it is submitted in `finally`. Every recorded
            # item of a flush runs: a flush is one submission.
            self._in_flight = (sequence, names, reads, [item for item in items if isinstance(item, _Read)])
            for pending in reads:
                pending.submitted = True
            try:
                sequence.eval_async()  # the patched binding: submit what is recorded, no re-recording, no wait
            finally:
                if not sequence.is_running():
                    sequence.eval_async()

    def _record_sequence(self, key: tuple, items: list, serials: set):
        sequence = self._spare_sequences.pop() if self._spare_sequences else self.manager.sequence()
        for item in items:
            sequence.record(item.op())
        self._replays[key] = sequence
        for serial in serials:  # the blocks its items use
            self._replays_by_block.setdefault(serial, set()).add(key)
        while len(self._replays) > REPLAY_CACHE_SIZE:
            old_key, old = self._replays.popitem(last=False)
            old.clear()  # drops its ops, and with them their tensors; the command pool lets it be recorded again
            self._spare_sequences.append(old)
        return sequence

    def wait(self) -> None:
        """Wait for the submission in flight, if any, and hand its copies to the host."""
        with self._lock:
            if self._in_flight is None:
                return
            sequence, _, reads, read_items = self._in_flight
            self._in_flight = None
            sequence.eval_await()
            if sequence is self._timed:
                ticks = sequence.get_timestamps()
                self.last_gpu_seconds = (ticks[-1] - ticks[0]) * self.device.timestamp_period_ns * 1e-9
                sequence.destroy()
                self._timed = None
            for item in read_items:
                if item.buffer.host_copy_recorded:  # not written again after this copy
                    item.buffer.host_valid, item.buffer.host_copy_recorded = True, False
            for pending in reads:
                pending._take()

    def flush(self, timed: bool = False) -> float | None:
        """Run everything recorded and wait for it. `timed`: return the seconds the device spent on it, from
        Vulkan timestamps around the whole submission (None where the device cannot time compute work)."""
        with self._lock:
            timed = timed and self.device.timestamp_period_ns > 0
            self.last_gpu_seconds = None
            self.submit(timed=timed)
            self.wait()
            return self.last_gpu_seconds

    def live_counts(self) -> dict:
        with self._lock:
            return {"algorithms": len(self._algorithms), "pooled_buffers": sum(len(v) for v in self._pool.values()),
                    "pooled_bytes": self._pool_bytes, "replays": len(self._replays)}

    def close(self) -> None:
        """Run what is recorded, then free this engine's buffers, kernels and sequences. The device stays."""
        with self._lock:
            if self.closed:
                return
            try:
                self.flush()
            finally:
                self.closed = True
                self._algorithms.clear()
                self._algorithms_by_block.clear()
                for sequence in (*self._replays.values(), *self._spare_sequences):
                    sequence.destroy()
                self._replays.clear()
                self._replays_by_block.clear()
                self._spare_sequences.clear()
                self._pool.clear()
                self._pool_bytes = 0
                for block in self._blocks.values():
                    self.context.give_back(block.nbytes)
                    block.destroy()
                self._blocks.clear()
                self.stats["device_bytes"] = self.stats["staging_bytes"] = 0
