"""Blocks of device memory and the pool that reuses them. Plain Python: the pool is handed what it needs (make a
tensor, is a block busy, drain the queue, forget a block), so it is tested without a device.

- **Device blocks** are device-only buffers. Freed ones wait in the pool, keyed by size and dtype, for the next
  request of that size: the oldest first, so a loop that allocates in the same order every step gets the same
  blocks every step (and with them the same cached kernels and replayable submissions). Reusing a block that
  recorded work still uses is fine: the recorder orders the new writes after the old reads with a barrier.
- **Staging blocks** are small host-visible buffers that uploads and host copies pass through, pooled by size in
  the same way. The host writes or reads them directly, so a staging block is handed out only when no recorded or
  running work uses it.
- Device blocks count against the device context's budget (every Graph on the device together); a request beyond
  it first evicts idle pooled blocks (this pool's, then other Graphs'), and only then raises DeviceMemoryError.
"""
from __future__ import annotations

import itertools
from typing import Callable

import numpy as np


class Block:
    """One kp tensor (`handle`) and what the pool knows of it. `serial` never repeats, unlike id()."""

    __slots__ = ("handle", "serial", "size", "dtype", "nbytes", "host", "released", "pinned", "in_use", "__weakref__")

    def __init__(self, handle, serial: int, size: int, dtype: np.dtype, host: bool):
        self.handle, self.serial, self.size, self.dtype, self.host = handle, serial, size, dtype, host
        self.nbytes = size * dtype.itemsize
        self.released = 0  # when it last went back to the pool (the pool's release clock)
        self.pinned = None  # what holds it out of the pool (a captured step), if anything
        self.in_use = False  # a buffer holds it (else it is pooled, or idle and pinned)

    def __repr__(self) -> str:
        return f"Block({self.serial}, {self.size} x {self.dtype}{', host' if self.host else ''})"


class Pool:
    """Blocks of one engine: made, handed out, given back, reused and destroyed here.

    make(size, dtype, host) -> a kp tensor. budget: reserve(nbytes, what) (raises when full), give_back(nbytes),
    fits(nbytes). is_busy(block): recorded or running work uses it. drain(): run everything recorded and wait (so
    nothing is busy). forget(block): drop what refers to a block about to be destroyed (kernels bound to it,
    recorded sequences). others_make_room(nbytes): ask other engines on the device to evict."""

    def __init__(self, make: Callable, budget, is_busy: Callable, drain: Callable, forget: Callable,
                 max_bytes: int, others_make_room: Callable | None = None):
        self._make, self._budget, self._is_busy, self._drain, self._forget = make, budget, is_busy, drain, forget
        self._others_make_room = others_make_room or (lambda nbytes: None)
        self.max_bytes = max_bytes  # what idle device blocks may hold; idle staging blocks have as much again
        self._serials = itertools.count(1)
        self._clock = itertools.count(1)
        self.blocks: dict[int, Block] = {}  # every block made here and not destroyed, by serial
        self._free: dict[tuple, list[Block]] = {}  # (size, dtype, host) -> idle blocks, newest first
        self.free_bytes = {False: 0, True: 0}  # idle bytes: device, staging
        self.stats = {"buffers_created": 0, "device_bytes": 0, "peak_device_bytes": 0, "staging_bytes": 0}

    # ---- handing out -------------------------------------------------------------------------------------------
    def take(self, size: int, dtype: np.dtype) -> Block:
        """A device block of `size` elements: a pooled one (the oldest of that size), else a new one."""
        free = self._free.get((size, dtype, False))
        if free:
            block = free.pop()
            self.free_bytes[False] -= block.nbytes
            return block
        return self._create(size, dtype, host=False)

    def take_staging(self, size: int, dtype: np.dtype) -> Block:
        """A staging block of `size` elements that no recorded or running work uses: the host may write or read it
        now."""
        free = self._free.get((size, dtype, True))
        if free:
            for position in range(len(free) - 1, -1, -1):  # oldest first
                if not self._is_busy(free[position]):
                    block = free.pop(position)
                    self.free_bytes[True] -= block.nbytes
                    return block
        return self._create(size, dtype, host=True)

    def pin(self, block: Block, owner) -> None:
        """Hold `block` out of the pool until `unpin` (a captured step replays on it)."""
        if block.pinned is None and not block.in_use:
            free = self._free.get((block.size, block.dtype, block.host), [])
            if block in free:
                free.remove(block)
                self.free_bytes[block.host] -= block.nbytes
        block.pinned = owner

    def unpin(self, block: Block, owner) -> None:
        if block.pinned is owner:
            block.pinned = None
            if not block.in_use:
                self.give_back(block)

    def give_back(self, block: Block) -> None:
        """`block` is idle from now on (recorded work may still use it). A pinned block stays out of the pool until
        unpinned."""
        if block.pinned is not None or block.serial not in self.blocks:
            return
        block.released = next(self._clock)
        free = self._free.get((block.size, block.dtype, block.host))
        if free is None:
            free = self._free[block.size, block.dtype, block.host] = []
        position = len(free)
        while position and free[position - 1].serial < block.serial:  # newest first; lists are short
            position -= 1
        free.insert(position, block)
        self.free_bytes[block.host] += block.nbytes
        while self.free_bytes[block.host] > self.max_bytes and self.evict_one(block.host):
            pass

    # ---- making and destroying ---------------------------------------------------------------------------------
    def _create(self, size: int, dtype: np.dtype, host: bool) -> Block:
        nbytes = size * dtype.itemsize
        if not host:
            self.make_room(nbytes)
            self._budget.reserve(nbytes, f"a buffer of {size:,} {dtype} elements")
        try:
            handle = self._make(size, dtype, host)
        except BaseException:
            if not host:
                self._budget.give_back(nbytes)
            raise
        block = Block(handle, next(self._serials), size, dtype, host)
        self.blocks[block.serial] = block
        if host:
            self.stats["staging_bytes"] += nbytes
        else:
            self.stats["buffers_created"] += 1
            self.stats["device_bytes"] += nbytes
            self.stats["peak_device_bytes"] = max(self.stats["peak_device_bytes"], self.stats["device_bytes"])
        return block

    def make_room(self, nbytes: int) -> None:
        """Evict idle device blocks (draining the queue if recorded or running work still uses them), then other
        engines', until `nbytes` more fit the budget or nothing is left to evict."""
        while self.free_bytes[False] and not self._budget.fits(nbytes):
            if not self.evict_one(False):
                self._drain()
                if not self.evict_one(False):
                    break
        if not self._budget.fits(nbytes):
            self._others_make_room(nbytes)

    def evict_one(self, host: bool = False) -> bool:
        """Destroy the idle block released longest ago that no recorded or running work uses; False if none.

        Leftovers of earlier work go first, and a training step's buffers, released and reused every step, stay
        (evicting the largest instead recreated a step's gradient buffer every step)."""
        idle = [(key, block) for key, free in self._free.items() if key[2] == host for block in free
                if not self._is_busy(block)]
        if not idle:
            return False
        key, block = min(idle, key=lambda kb: kb[1].released)
        self._free[key].remove(block)
        if not self._free[key]:
            del self._free[key]
        self.free_bytes[host] -= block.nbytes
        self.destroy(block)
        return True

    def destroy(self, block: Block) -> None:
        self._forget(block)
        del self.blocks[block.serial]
        if block.host:
            self.stats["staging_bytes"] -= block.nbytes
        else:
            self.stats["device_bytes"] -= block.nbytes
            self._budget.give_back(block.nbytes)
        block.handle.destroy()

    def destroy_all(self) -> None:
        """Every block made here, in use or not (the engine is closing)."""
        self._free.clear()
        self.free_bytes = {False: 0, True: 0}
        for block in list(self.blocks.values()):
            self.destroy(block)

    def counts(self) -> dict:
        return {"pooled_buffers": sum(len(v) for k, v in self._free.items() if not k[2]),
                "pooled_bytes": self.free_bytes[False]}
