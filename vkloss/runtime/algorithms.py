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

A pipeline is compiled when its first Algorithm is made: lavapipe compiles it on the CPU (12 to 45 ms for vkloss's
kernels), and a model's first step makes several. So `get` returns at once with a Future of the Algorithm, made on
a worker thread with the GIL released (kp patch 15): a step's new pipelines compile side by side, on as many cores
as there are, while Python records the rest of the step. The queue takes the Algorithm when it records the dispatch.
An Algorithm whose pipeline is still being compiled for another is made once that one is done, and shares it.
"""
from __future__ import annotations

import itertools
import os
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from .. import shaders
from .kompute import kp

ALGORITHM_CACHE_SIZE = 1024
_compilers: ThreadPoolExecutor | None = None  # the process's pipeline-compiling threads, made on first use


def _start_compilers() -> None:
    """The compiling threads, one per CPU, all started now: a thread started while the CPUs compile took
    milliseconds to get going, and ThreadPoolExecutor starts one per task until it has them all."""
    global _compilers
    if _compilers is None:
        count = 2 * (os.cpu_count() or 1)
        _compilers = ThreadPoolExecutor(max_workers=count, thread_name_prefix="vkloss-compile")
        running = threading.Barrier(count + 1)
        for _ in range(count):
            _compilers.submit(running.wait)
        running.wait()


def _compile(make) -> Future:
    """make() on one of the process's compiling threads."""
    return _compilers.submit(make)


def _after(first: Future, make) -> Future:
    """make() once `first` is done (at once if it is), on the thread that finished it: a Future of its result."""
    made = Future()

    def run(_):
        if not made.set_running_or_notify_cancel():  # cancelled: its buffers may be gone
            return
        try:
            made.set_result(make())
        except BaseException as error:  # noqa: B036  (handed to whoever waits for the Algorithm)
            made.set_exception(error)
    first.add_done_callback(run)
    return made


def _settle(future: Future) -> None:
    """Wait for `future` (an Algorithm being made on buffers about to go); its error, if any, is its waiter's."""
    if not future.cancel():
        future.exception()


class Launch:
    """A shader variant with its grid, workgroup size, specialization constants and push-constant word count."""

    __slots__ = ("variant", "grid", "workgroup", "constants", "push_words")

    def __init__(self, variant: shaders.Variant, grid: tuple, workgroup: int, constants: tuple, push_words: int):
        self.variant, self.grid, self.workgroup, self.constants = variant, grid, workgroup, constants
        self.push_words = push_words


class Algorithms:
    def __init__(self, manager, size: int = ALGORITHM_CACHE_SIZE):
        self._manager, self._size = manager, size
        _start_compilers()
        self._serials = itertools.count(1)
        self._launches: dict[tuple, Launch] = {}
        self._cache: OrderedDict = OrderedDict()  # (launch, *block serials) -> (serial, Future of a kp.Algorithm)
        self._compiling: dict[tuple, Future] = {}  # pipeline -> the Algorithm compiling it, while it does
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
        """(serial, Future of the kp.Algorithm) for `launch` bound to `blocks` in order (`push`: its first push
        constants)."""
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
        handles, grid = [block.handle for block in blocks], list(launch.grid)
        constants, push = np.array([launch.workgroup, *launch.constants], np.uint32), np.array(push, np.uint32)

        def make():
            return self._manager.algorithm_u32(handles, spirv, grid, constants, push)
        pipeline = (launch.variant, launch.workgroup, launch.constants, launch.push_words)
        compiling = self._compiling.get(pipeline)
        if compiling is None:
            algorithm = self._compiling[pipeline] = _compile(make)
            algorithm.add_done_callback(lambda _: self._compiling.pop(pipeline, None))
        else:  # made once that one's pipeline is, sharing it
            algorithm = _after(compiling, make)
        self.created += 1
        found = self._cache[key] = (next(self._serials), algorithm)
        for block in blocks:
            self._by_block.setdefault(block.serial, set()).add(key)
        while len(self._cache) > self._size:
            old_key, (_, old) = self._cache.popitem(last=False)
            _settle(old)
            for serial in old_key[1:]:
                keys = self._by_block.get(serial)
                if keys is not None:
                    keys.discard(old_key)
        return found

    def forget(self, block) -> None:
        """`block` is about to be destroyed: drop its Algorithms, once none is still being made on it."""
        for key in self._by_block.pop(block.serial, ()):
            found = self._cache.pop(key, None)
            if found is not None:
                _settle(found[1])

    def clear(self) -> None:
        for _, algorithm in self._cache.values():
            _settle(algorithm)
        self._cache.clear()
        self._by_block.clear()
