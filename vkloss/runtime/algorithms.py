"""Kernels ready to dispatch: kp Algorithms, cached.

kp binds an Algorithm's buffers when it is made (its descriptor set is written once), so an Algorithm serves one
shader variant on one set of blocks, with one grid and specialization. The cache is keyed by exactly that; the pool
hands a loop the same blocks every step, so after the first steps every dispatch finds its Algorithm here. A block
that is destroyed takes its Algorithms with it.
"""
from __future__ import annotations

import itertools
from collections import OrderedDict

import numpy as np

from .. import shaders

ALGORITHM_CACHE_SIZE = 1024


class Algorithms:
    def __init__(self, manager, size: int = ALGORITHM_CACHE_SIZE):
        self._manager, self._size = manager, size
        self._serials = itertools.count(1)
        self._cache: OrderedDict = OrderedDict()  # key -> (serial, kp.Algorithm)
        self._by_block: dict[int, set] = {}
        self.created = 0

    def __len__(self) -> int:
        return len(self._cache)

    def get(self, variant: shaders.Variant, blocks: tuple, grid: tuple, push: np.ndarray, workgroup: int,
            constants: tuple):
        """(serial, kp.Algorithm) for `variant` bound to `blocks` in order."""
        key = (variant, tuple(block.serial for block in blocks), grid, len(push), workgroup, constants)
        found = self._cache.get(key)
        if found is not None:
            self._cache.move_to_end(key)
            return found
        spirv = shaders.load(variant)
        declared = shaders.binding_count(spirv)
        if declared != len(blocks):
            # kp would bind them anyway, and the shader would read or write past what it was given
            raise ValueError(f"{variant.name} declares {declared} buffer bindings but was given {len(blocks)}")
        algorithm = self._manager.algorithm([block.handle for block in blocks], spirv, list(grid),
                                            np.array([workgroup, *constants], np.uint32), push)
        self.created += 1
        found = self._cache[key] = (next(self._serials), algorithm)
        for block in blocks:
            self._by_block.setdefault(block.serial, set()).add(key)
        while len(self._cache) > self._size:
            old_key, _ = self._cache.popitem(last=False)
            for serial in old_key[1]:
                keys = self._by_block.get(serial)
                if keys is not None:
                    keys.discard(old_key)
        return found

    def forget(self, block) -> None:
        for key in self._by_block.pop(block.serial, ()):
            self._cache.pop(key, None)

    def clear(self) -> None:
        self._cache.clear()
        self._by_block.clear()
