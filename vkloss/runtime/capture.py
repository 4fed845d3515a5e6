"""A captured step's recorded work: its items, the blocks they use (pinned: held out of the pool for as long as the
capture lives), the buffers they write (whose versions each replay moves on), and its endings: host copies into
staging blocks, one set per replay that may be in flight at once, taken in turn. Plain Python: the engine records
and replays it."""
from __future__ import annotations

import weakref


class StepRecording:
    """What the engine notes while a step is being captured."""

    def __init__(self):
        self.allocated: set = set()  # blocks handed to buffers during the capture
        self.written: dict = {}  # id(buffer) -> weakref of each buffer a recorded item writes


class Ending:
    """A replay's last items: host copies of the step's outputs and check counts, into staging blocks of its own."""

    def __init__(self, items: list, blocks: list, outputs: list, checks: list):
        self.items, self.blocks = items, blocks
        self.outputs = outputs  # (weakref of an output buffer, its staging block): copied to the host every replay
        self.checks = checks  # staging blocks of the device-side checks' counts, in order


class CapturedWork:
    """A step's items, ready to replay."""

    def __init__(self, items: list, blocks: list, written: list, endings: list):
        self.items = items
        self.blocks = blocks
        self.block_set = set(blocks)
        self.written = written  # weakrefs of the buffers the step writes
        self.endings = endings
        self._turn = 0

    def pinned_blocks(self) -> list:
        """Every block the capture holds out of the pool: its items' and each ending's."""
        return self.blocks + [block for ending in self.endings for block in ending.blocks]

    def next_ending(self) -> Ending:
        """The ending for the next replay: each in turn."""
        ending = self.endings[self._turn]
        self._turn = (self._turn + 1) % len(self.endings)
        return ending

    @staticmethod
    def weak(buffer):
        return weakref.ref(buffer)
