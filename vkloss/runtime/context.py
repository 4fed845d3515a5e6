"""The device context: one kp.Manager per device and process, and the memory budget every Graph on it shares.

NVIDIA's driver crashes when a Vulkan instance is made again after one was destroyed, so a context is made on first
use and never destroyed before the process exits; a Graph's `close()` frees its buffers and kernels, never the
device.
"""
from __future__ import annotations

import ctypes
import os
import re
import threading

import numpy as np

from .kompute import kp, require

from ..device import DeviceInfo
from ..errors import DeviceMemoryError

KP_PATCH_LEVEL = 8  # tools/kp_patch.py's PATCH_LEVEL
# Share of the device's largest device-local heap that vkloss may hold (in use and pooled). VKLOSS_MEMORY_BUDGET
# overrides it.
MEMORY_SHARE = 0.9
BUDGET_VARIABLE = "VKLOSS_MEMORY_BUDGET"
_UNITS = {"": 1, "b": 1, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "tb": 10 ** 12,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}
_AMOUNT = re.compile(r"^\s*([+-]?[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def _check_kp() -> None:
    """vkloss._kp is there, and built with the patch level this vkloss needs."""
    require()
    level = getattr(kp, "vkloss_patch", None)
    if level != KP_PATCH_LEVEL:
        raise ImportError(f"vkloss needs its Kompute extension built with tools/kp_patch.py level {KP_PATCH_LEVEL}; "
                          f"vkloss._kp has {'no patch' if level is None else f'level {level}'}: build vkloss again "
                          "(pip install -e . in a checkout)")


def parse_bytes(text: str, name: str = BUDGET_VARIABLE) -> int:
    """A byte count as people write one: `4000000000`, `1e9`, `512MiB`, `2GB`, `1.5 GiB` (k/M/G/T B are powers of
    1000, KiB/MiB/GiB/TiB of 1024). Anything else, or a count that is not positive, raises ValueError naming
    `name` and the format."""
    match = _AMOUNT.match(text)
    unit = match and match.group(2).lower()
    if not match or unit not in _UNITS:
        raise ValueError(f"{name}={text!r} is not a byte count: write a number of bytes such as 4000000000, 1e9, "
                         "512MiB or 2GB")
    value = float(match.group(1)) * _UNITS[unit]
    if not 1 <= value < float("inf"):
        raise ValueError(f"{name}={text!r}: the budget must be at least one byte")
    return int(value)


class DeviceContext:
    """One device's kp.Manager and the memory every Graph on it holds. Made once per device and process."""

    def __init__(self, device: DeviceInfo):
        override = os.environ.get(BUDGET_VARIABLE, "").strip()
        # before the manager: a bad setting fails without touching the device
        self.budget = parse_bytes(override) if override else int(device.device_memory * MEMORY_SHARE)
        self.device = device
        _check_kp()  # the first device context is the first thing that needs vkloss._kp
        self.manager = kp.Manager(device.index)
        self.lock = threading.Lock()
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

    def fits(self, nbytes: int) -> bool:
        return self.used + nbytes <= self.budget

    def tensor(self, size: int, dtype: np.dtype, host: bool):
        """A kp tensor of `size` elements: device-only (nothing filled, nothing copied: np.empty), or host-visible
        (coherent memory the host writes and reads directly: a staging buffer). A refused allocation raises
        DeviceMemoryError (the patched kp raises where vkAllocateMemory fails)."""
        kind = kp.TensorTypes.host if host else kp.TensorTypes.storage
        try:
            return self.manager.tensor_t(np.empty(size, dtype), kind)
        except RuntimeError as e:
            raise DeviceMemoryError(f"a {'staging' if host else 'device'} buffer of {size:,} {dtype} elements "
                                    f"({size * dtype.itemsize:,} bytes): the device refused the allocation ({e}); "
                                    f"vkloss holds {self.used:,} bytes on {self.device.name}") from None


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
