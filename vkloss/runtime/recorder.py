"""Recording work in an order the device must keep: items, their hazards, the barriers between them, replay keys.

Plain Python, tested without a device. kp 0.9.0 records only a transfer-to-compute barrier before each dispatch,
and a GPU overlaps the rest, so the recorder tracks what each item reads and writes since that block's last barrier
and puts a buffer barrier (every earlier write made visible to every later access, compute and transfer) before any
item that reads a block after a write, or writes it after any access. Submitting is not its business: the engine
takes the items (`take`) and hands them to the queue.

Every item has a `key`; a submission's key is the tuple of its items' keys. Two submissions with the same key run
the same kernels on the same blocks with the same push constants: the queue replays the first one's recorded
sequence for the second.
"""
from __future__ import annotations

WRITTEN, READ = 1, 2


class Dispatch:
    """A kernel run: `kernel` is what the queue records (a Future of a kp Algorithm: runtime/algorithms.py, None in
    tests without a device), `key` identifies kernel and push constants."""

    __slots__ = ("kernel", "push", "reads", "writes", "key")

    def __init__(self, kernel, push, reads: tuple, writes: tuple, key):
        self.kernel, self.push, self.reads, self.writes, self.key = kernel, push, reads, writes, key


class Copy:
    """A buffer copy by the device's copy engine: device to device, staging to device (an upload), or device to
    staging (a host copy)."""

    __slots__ = ("source", "target", "reads", "writes", "key")

    def __init__(self, source, target):
        self.source, self.target = source, target
        self.reads, self.writes = (source,), (target,)
        self.key = ("c", source.serial, target.serial)


class Barrier:
    """Every earlier write of these blocks made visible to every later device access (and every earlier access
    ordered before later ones); `to_host`: copies' writes made visible to the host's reads after the fence."""

    __slots__ = ("blocks", "to_host", "key")

    def __init__(self, blocks: tuple, to_host: bool = False):
        self.blocks, self.to_host = blocks, to_host
        self.key = ("b", to_host, tuple(block.serial for block in blocks))


class Recorder:
    """The items recorded since the last `take`, with the barriers their hazards need."""

    def __init__(self):
        self.items: list = []
        # block -> WRITTEN | READ since its last barrier. Every block an item uses is here until `take`: a barrier
        # clears a block only for the item that caused it, which sets it again.
        self._access: dict = {}
        self.barriers = 0  # recorded since the recorder was made

    def __len__(self) -> int:
        return len(self.items)

    def uses(self, block) -> bool:
        """Whether a recorded item reads or writes `block`."""
        return block in self._access

    def record(self, item) -> None:
        access = self._access
        hazards = None
        for block in item.reads:
            if access.get(block, 0) & WRITTEN:
                hazards = [block] if hazards is None else hazards + [block]
        for block in item.writes:
            if block in access:
                hazards = [block] if hazards is None else hazards + [block]
        if hazards is not None:
            hazards = tuple(dict.fromkeys(hazards))  # a block bound twice (mul(d, d)) is named once
            self.items.append(Barrier(hazards))
            self.barriers += 1
            for block in hazards:
                del access[block]
        for block in item.reads:
            access[block] = access.get(block, 0) | READ
        for block in item.writes:
            access[block] = access.get(block, 0) | WRITTEN
        self.items.append(item)

    def take(self) -> tuple[list, list]:
        """The recorded items, ending with the barrier that hands staging blocks' new contents to the host, and
        every block they use; the recorder starts empty again."""
        items, blocks = self.items, list(self._access)
        self.items, self._access = [], {}
        to_host = tuple(dict.fromkeys(item.target for item in items if type(item) is Copy and item.target.host))
        if to_host:
            items.append(Barrier(to_host, to_host=True))
        return items, blocks
