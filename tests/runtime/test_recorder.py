"""The recorder, without a device: hazards become barriers, and only where an item needs one."""
from vkloss.runtime.recorder import Barrier, Copy, Dispatch, Recorder


class FakeBlock:
    def __init__(self, serial, host=False):
        self.serial, self.host = serial, host

    def __repr__(self):
        return f"b{self.serial}"


def kernel(reads=(), writes=(), name="k"):
    return Dispatch(name, None, tuple(reads), tuple(writes), (name, tuple(b.serial for b in reads + writes)))


def barriers(recorder):
    return [[b.serial for b in item.blocks] for item in recorder.items if isinstance(item, Barrier)]


A, B, C, D = (FakeBlock(i) for i in range(1, 5))


def test_a_read_after_a_write_gets_a_barrier_on_that_block_only():
    r = Recorder()
    r.record(kernel([A], [B]))
    r.record(kernel([B], [C]))
    assert barriers(r) == [[2]]
    assert isinstance(r.items[1], Barrier) and r.items[2].reads == (B,)


def test_reads_after_reads_need_nothing():
    r = Recorder()
    r.record(kernel([A], [B]))
    r.record(kernel([A], [C]))
    r.record(kernel([A, A], [D]))
    assert barriers(r) == []


def test_a_write_after_a_read_or_a_write_gets_a_barrier():
    r = Recorder()
    r.record(kernel([A], [B]))
    r.record(kernel([C], [A]))  # write after read
    r.record(kernel([C], [A]))  # write after write
    assert barriers(r) == [[1], [1]]


def test_a_block_bound_twice_is_named_once():
    r = Recorder()
    r.record(kernel([], [A]))
    r.record(kernel([A, A], [A]))
    assert barriers(r) == [[1]]


def test_a_barrier_clears_a_block_until_its_next_access():
    r = Recorder()
    r.record(kernel([], [A]))
    r.record(kernel([A], [B]))  # barrier on A
    r.record(kernel([A], [C]))  # A was read since: no new barrier
    r.record(kernel([], [A]))  # A read since its barrier: write after read
    assert barriers(r) == [[1], [1]]
    assert r.barriers == 2


def test_every_block_an_item_uses_is_in_use_until_taken():
    r = Recorder()
    r.record(kernel([A], [B]))
    r.record(kernel([B], [A]))
    assert all(r.uses(b) for b in (A, B)) and not r.uses(C)
    items, blocks = r.take()
    assert set(blocks) == {A, B} and len(items) == 3
    assert not r.uses(A) and len(r) == 0


def test_copies_to_staging_end_with_a_barrier_to_the_host():
    staging, upload = FakeBlock(10, host=True), FakeBlock(11, host=True)
    r = Recorder()
    r.record(Copy(upload, A))
    r.record(kernel([A], [B]))
    r.record(Copy(B, staging))
    items, _ = r.take()
    last = items[-1]
    assert isinstance(last, Barrier) and last.to_host and [b.serial for b in last.blocks] == [10]


def test_the_same_work_gives_the_same_key():
    def record():
        r = Recorder()
        r.record(kernel([A], [B], "x"))
        r.record(kernel([B], [C], "y"))
        return tuple(item.key for item in r.take()[0])

    assert record() == record()
