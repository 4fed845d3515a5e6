"""The pool, without a device: reuse by size, the oldest first, staging only when idle, a budget that evicts before
it refuses."""
import numpy as np
import pytest

from vkloss.errors import DeviceMemoryError
from vkloss.runtime.memory import Pool

F32 = np.dtype(np.float32)


class Handle:
    destroyed = 0

    def destroy(self):
        Handle.destroyed += 1


class Budget:
    def __init__(self, budget):
        self.budget, self.used = budget, 0

    def fits(self, nbytes):
        return self.used + nbytes <= self.budget

    def reserve(self, nbytes, what):
        if not self.fits(nbytes):
            raise DeviceMemoryError(f"{what} does not fit")
        self.used += nbytes

    def give_back(self, nbytes):
        self.used -= nbytes


def make_pool(budget=1 << 20, max_bytes=1 << 20, busy=(), drained=None):
    forgotten = []
    busy = set(busy)

    def drain():
        busy.clear()
        if drained is not None:
            drained.append(True)

    pool = Pool(make=lambda size, dtype, host: Handle(), budget=Budget(budget), is_busy=lambda b: b.serial in busy,
                drain=drain, forget=forgotten.append, max_bytes=max_bytes)
    pool.busy, pool.forgotten = busy, forgotten
    return pool


def test_a_freed_block_serves_the_next_request_of_its_size():
    pool = make_pool()
    a = pool.take(10, F32)
    pool.give_back(a)
    assert pool.take(10, F32) is a
    assert pool.take(11, F32) is not a
    assert pool.stats["buffers_created"] == 2


def test_the_oldest_block_of_a_size_goes_first():
    pool = make_pool()
    blocks = [pool.take(10, F32) for _ in range(3)]
    for block in reversed(blocks):
        pool.give_back(block)
    assert [pool.take(10, F32) for _ in range(3)] == blocks


def test_a_staging_block_in_use_is_not_handed_out():
    pool = make_pool()
    staging = pool.take_staging(4, F32)
    pool.give_back(staging)
    pool.busy.add(staging.serial)
    other = pool.take_staging(4, F32)
    assert other is not staging
    pool.busy.clear()
    pool.give_back(other)
    assert pool.take_staging(4, F32) is staging


def test_a_full_budget_evicts_idle_blocks_first_then_refuses():
    pool = make_pool(budget=100)
    a = pool.take(10, F32)  # 40 bytes
    b = pool.take(10, F32)
    pool.give_back(a)
    c = pool.take(15, F32)  # 60 bytes: a goes
    assert a.serial not in pool.blocks and pool.forgotten == [a]
    with pytest.raises(DeviceMemoryError):
        pool.take(1, F32)
    assert c.serial in pool.blocks and b.serial in pool.blocks


def test_blocks_in_use_are_drained_before_they_are_evicted():
    drained = []
    pool = make_pool(budget=80, drained=drained)
    a = pool.take(20, F32)
    pool.give_back(a)
    pool.busy.add(a.serial)  # recorded work still uses it
    b = pool.take(10, F32)  # 40 more bytes do not fit beside a's 80
    assert drained and a.serial not in pool.blocks and b.serial in pool.blocks


def test_the_idle_cap_evicts_what_was_released_longest_ago():
    pool = make_pool(max_bytes=100)
    blocks = [pool.take(10, F32) for _ in range(3)]  # 40 bytes each
    for block in blocks:
        pool.give_back(block)
    assert blocks[0].serial not in pool.blocks
    assert all(b.serial in pool.blocks for b in blocks[1:])
    assert pool.counts() == {"pooled_buffers": 2, "pooled_bytes": 80}


def test_a_pinned_block_stays_out_of_the_pool():
    pool = make_pool()
    a = pool.take(10, F32)
    a.pinned = "a captured step"
    pool.give_back(a)
    assert pool.take(10, F32) is not a


def test_destroy_all_gives_the_budget_back():
    pool = make_pool()
    pool.take(10, F32)
    pool.give_back(pool.take(20, F32))
    pool.take_staging(5, F32)
    pool.destroy_all()
    assert pool._budget.used == 0 and not pool.blocks
