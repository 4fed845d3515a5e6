"""Kernels ready to dispatch: kp Algorithms, cached.

A `Launch` is a shader variant launched one way (grid, workgroup, specialization constants, push-constant size),
made once and kept: the cache is keyed by the launch object and the blocks' serials, which hash fast.

kp binds an Algorithm's buffers when it is made (its descriptor set is written once), so an Algorithm serves one
launch on one set of blocks. The pool hands a loop the same blocks every step, so after the first steps every
dispatch finds its Algorithm here. A block that is destroyed takes its Algorithms with it. (Keying by launch alone,
with buffers bound per dispatch as ggml does, would need kp to write a descriptor set per dispatch: a patch to
kp's Algorithm and OpAlgoDispatch, and a recorded sequence could then no longer be replayed as it is.)

What a new Algorithm costs is its descriptor set: the Algorithms of one SPIR-V, workgroup, specialization constants
and push-constant size share one pipeline (tools/kp_patch.py, patch 14), so the same product on other buffers (a
model's evaluation batch, a pool reuse) compiles nothing; lavapipe took 12 ms to compile each matmul pipeline.
`pipelines()` counts the pipelines the live Algorithms share, in this process.
"""
from __future__ import annotations

import itertools
from collections import OrderedDict

import numpy as np

from .. import shaders
from .kompute import kp

ALGORITHM_CACHE_SIZE = 1024


class Launch:
    """A shader variant with its grid, workgroup size, specialization constants and push-constant word count."""

    __slots__ = ("variant", "grid", "workgroup", "constants", "push_words")

    def __init__(self, variant: shaders.Variant, grid: tuple, workgroup: int, constants: tuple, push_words: int):
        self.variant, self.grid, self.workgroup, self.constants = variant, grid, workgroup, constants
        self.push_words = push_words


class Algorithms:
    def __init__(self, manager, size: int = ALGORITHM_CACHE_SIZE):
        self._manager, self._size = manager, size
        self._serials = itertools.count(1)
        self._launches: dict[tuple, Launch] = {}
        self._cache: OrderedDict = OrderedDict()  # (launch, *block serials) -> (serial, kp.Algorithm)
        self._by_block: dict[int, set] = {}
        self.created = 0

    def __len__(self) -> int:
        return len(self._cache)

    @staticmethod
    def pipelines() -> int:
        return kp.shared_pipelines()

    def launch(self, variant: shaders.Variant, grid: tuple, workgroup: int, constants: tuple,
               push_words: int) -> Launch:
        """The one Launch object for these."""
        key = (variant, grid, workgroup, constants, push_words)
        found = self._launches.get(key)
        if found is None:
            found = self._launches[key] = Launch(variant, grid, workgroup, constants, push_words)
        return found

    def get(self, launch: Launch, blocks: tuple, push: np.ndarray):
        """(serial, kp.Algorithm) for `launch` bound to `blocks` in order (`push`: its first push constants)."""
        key = (launch, *[block.serial for block in blocks])
        found = self._cache.get(key)
        if found is not None:
            self._cache.move_to_end(key)
            return found
        variant = launch.variant
        spirv = shaders.load(variant)
        declared = shaders.binding_count(spirv)
        if declared != len(blocks):
            # kp would bind them anyway, and the shader would read or write past what it was given
            raise ValueError(f"{variant.name} declares {declared} buffer bindings but was given {len(blocks)}")
        algorithm = self._manager.algorithm([block.handle for block in blocks], spirv, list(launch.grid),
                                            np.array([launch.workgroup, *launch.constants], np.uint32), push)
        self.created += 1
        found = self._cache[key] = (next(self._serials), algorithm)
        for block in blocks:
            self._by_block.setdefault(block.serial, set()).add(key)
        while len(self._cache) > self._size:
            old_key, _ = self._cache.popitem(last=False)
            for serial in old_key[1:]:
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
