"""Buffer, the handle an engine gives out for a pool block, and push constants packed as kp takes them."""
from __future__ import annotations

import numpy as np


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


class Buffer:
    """A device buffer of `size` elements: a pool block, its write version and its host-valid values. Goes back to
    the pool when nothing refers to it."""

    __slots__ = ("engine", "block", "version", "host", "host_version", "copy_job", "__weakref__")

    def __init__(self, engine, block):
        self.engine, self.block = engine, block
        block.in_use = True
        self.version = 0  # bumped by every recorded write
        self.host, self.host_version = None, -1  # values copied at host_version (valid while it is `version`)
        self.copy_job = None  # the newest host copy recorded or running, until it is taken

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
            self.engine.release(self.block)
        except Exception:  # interpreter shutdown: the engine may already be gone
            pass
