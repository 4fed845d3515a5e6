"""The kernel cache without a device: Algorithms are made on compiling threads, side by side, and never on buffers
that are gone (a fake kp manager stands in for the device)."""
import threading
import time

import numpy as np
import pytest

from vkloss.ops.elementwise import ELEMENTWISE
from vkloss.ops.matmul import MATMUL
from vkloss.runtime.algorithms import Algorithms


class FakeBlock:
    def __init__(self, serial):
        self.serial, self.handle = serial, f"tensor{serial}"


class FakeManager:
    """Makes 'algorithms' slowly, as lavapipe compiles pipelines: each call holds until `gate` opens."""

    def __init__(self):
        self.gate, self.lock = threading.Event(), threading.Lock()
        self.calls, self.running, self.most_running, self.fail = [], 0, 0, False

    def algorithm_u32(self, handles, spirv, grid, constants, push):
        with self.lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        try:
            assert self.gate.wait(10), "the test never opened the gate"
            if self.fail:
                raise RuntimeError("vkCreateComputePipelines failed")
            with self.lock:
                self.calls.append((tuple(handles), threading.current_thread().name))
            return ("algorithm", tuple(handles), tuple(int(c) for c in constants))
        finally:
            with self.lock:
                self.running -= 1


def launches(algorithms):
    """Two launches of different kernels, and one more of the first kernel's pipeline on another grid."""
    add = ELEMENTWISE.variant(op="add").shader
    product = MATMUL.variant().shader
    return (algorithms.launch(add, (1, 1, 1), 256, (), 3), algorithms.launch(product, (2, 1, 1), 8, (), 12),
            algorithms.launch(add, (4, 1, 1), 256, (), 3))


def blocks(*serials):
    return tuple(FakeBlock(s) for s in serials)


def test_get_returns_before_the_algorithm_is_made_and_pipelines_compile_side_by_side():
    manager = FakeManager()
    algorithms = Algorithms(manager)
    add, product, _ = launches(algorithms)
    serial_a, made_a = algorithms.get(add, blocks(1, 2, 3), np.zeros(3, np.uint32))
    serial_b, made_b = algorithms.get(product, blocks(4, 5, 6), np.zeros(12, np.uint32))
    assert serial_a != serial_b and not made_a.done() and not made_b.done()  # Python went on recording
    deadline = time.monotonic() + 5
    while manager.running < 2 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert manager.most_running == 2  # both kernels compile at once
    manager.gate.set()
    assert made_a.result(5) == ("algorithm", ("tensor1", "tensor2", "tensor3"), (256,))
    assert made_b.result(5)[1] == ("tensor4", "tensor5", "tensor6")
    assert all(name.startswith("vkloss-compile") for _, name in manager.calls)
    # the same launch on the same blocks: the cached one, not another
    assert algorithms.get(add, blocks(1, 2, 3), np.zeros(3, np.uint32)) == (serial_a, made_a)
    assert algorithms.created == 2


def test_an_algorithm_of_a_pipeline_being_compiled_waits_for_it_and_then_shares_it():
    manager = FakeManager()
    algorithms = Algorithms(manager)
    add, _, add_wider = launches(algorithms)
    _, first = algorithms.get(add, blocks(1, 2, 3), np.zeros(3, np.uint32))
    _, second = algorithms.get(add_wider, blocks(7, 8, 9), np.zeros(3, np.uint32))  # same pipeline, other grid
    time.sleep(0.05)
    assert manager.most_running == 1  # the second is not compiled beside the first: it will share its pipeline
    manager.gate.set()
    second.result(5)
    assert [handles for handles, _ in manager.calls] == [("tensor1", "tensor2", "tensor3"),
                                                         ("tensor7", "tensor8", "tensor9")]


def test_forgetting_a_block_waits_for_the_algorithms_being_made_on_it():
    manager = FakeManager()
    algorithms = Algorithms(manager)
    add, product, _ = launches(algorithms)
    doomed = blocks(1, 2, 3)
    _, made = algorithms.get(add, doomed, np.zeros(3, np.uint32))
    _, waiting = algorithms.get(add, blocks(1, 5, 6), np.zeros(3, np.uint32))  # shares block 1, after `made`
    threading.Timer(0.05, manager.gate.set).start()
    algorithms.forget(doomed[0])  # returns only once nothing is made on block 1 any more
    assert made.done() and waiting.done()
    calls = len(manager.calls)
    time.sleep(0.05)
    assert len(manager.calls) == calls  # nothing made on it afterwards
    assert len(algorithms) == 0
    # a new one on the same blocks is made again
    _, again = algorithms.get(add, doomed, np.zeros(3, np.uint32))
    assert again.result(5)[1] == ("tensor1", "tensor2", "tensor3")


def test_a_failed_algorithm_raises_where_it_is_taken_and_the_next_one_compiles_again():
    manager = FakeManager()
    manager.fail = True
    manager.gate.set()
    algorithms = Algorithms(manager)
    add, _, _ = launches(algorithms)
    _, failed = algorithms.get(add, blocks(1, 2, 3), np.zeros(3, np.uint32))
    with pytest.raises(RuntimeError, match="vkCreateComputePipelines failed"):
        failed.result(5)
    manager.fail = False
    _, made = algorithms.get(add, blocks(4, 5, 6), np.zeros(3, np.uint32))
    assert made.result(5)[1] == ("tensor4", "tensor5", "tensor6")
