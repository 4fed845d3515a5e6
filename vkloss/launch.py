"""Launch policy: how a kernel is spread over a device (workgroup sizes, grids, access widths, row modes).

Everything here is a function of a `DeviceInfo`, nothing else: it never touches kp or a buffer, so it is tested
with device descriptions alone (an H100's, lavapipe's), and the ops ask it through their ForwardContext.
"""
from __future__ import annotations

from .device import DeviceInfo
from .errors import DeviceMemoryError

WORKGROUP = 256  # invocations per workgroup; a power of two (the tree reductions rely on it)
# Loop iterations per invocation and pass in a row kernel: each sums that many terms in float32 one after another
# (2^11 keeps cross-entropy at 2^18 classes within 2e-5 of float64), far under lavapipe's silent limit of about
# 65,535 iterations per invocation.
MAX_LOOP_PER_PASS = 1 << 11
LONG_ROW_PER_INVOCATION = 8  # elements (or vec4s) per invocation from which a GPU row kernel takes its widest workgroup
ROW_ONCE_VALUES = (2, 8)  # vec4s each invocation of a registers-held row keeps: 8 covers 32,768 classes at 1,024
DISPATCH_LIMIT = 65535  # workgroups per dimension that every device takes


def ceil_div(a: int, b: int) -> int:
    """How many groups of b hold a things."""
    return -(-int(a) // int(b))


class LaunchPolicy:
    """The launch rules for one device."""

    def __init__(self, device: DeviceInfo):
        self.device = device
        self.max_groups_x = min(DISPATCH_LIMIT, device.max_workgroup_count[0])
        self.max_groups_y = min(DISPATCH_LIMIT, device.max_workgroup_count[1])

    def grid(self, groups: int) -> tuple[int, int, int]:
        """Workgroup counts for `groups` workgroups: at most 65535 (or the device's limit) along x, the rest on y."""
        groups = max(1, int(groups))
        x = min(groups, self.max_groups_x)
        y = ceil_div(groups, x)
        if y > self.max_groups_y:
            raise DeviceMemoryError(f"{groups:,} workgroups exceed the device's dispatch limit "
                                    f"{self.max_groups_x} x {self.max_groups_y}")
        return (x, y, 1)

    def groups_for(self, invocations: int, workgroup: int = WORKGROUP) -> tuple[int, int, int]:
        return self.grid(ceil_div(invocations, workgroup))

    def wide_loads(self) -> bool:
        """Whether kernels move eight float32 values per access (shaders/include/access.glsl): on CPU devices with
        64-bit integers in shaders, where lavapipe's cost is per access, not per byte. GPUs read a vec4 per lane at
        full bandwidth already."""
        return self.device.type == "cpu" and self.device.shader_int64

    def access_width(self, *sizes: int) -> int:
        """Float32 values a kernel over arrays of these sizes moves per access: eight where wide_loads() and every
        size is a multiple of 8, four (a vec4) where every size is a multiple of 4, else one."""
        if self.wide_loads() and all(size % 8 == 0 for size in sizes):
            return 8
        return 4 if all(size % 4 == 0 for size in sizes) else 1

    def largest_workgroup(self) -> int:
        """The widest one-dimensional workgroup the reductions (shaders/include/reduce.glsl) take here: a power of
        two up to 1,024, within the device's invocation and size limits and with its vec4 tree in shared memory."""
        limit = min(1024, self.device.max_workgroup_invocations, self.device.max_workgroup_size)
        workgroup = WORKGROUP
        while workgroup * 2 <= limit and (workgroup * 2 + 1) * 16 <= self.device.max_shared_memory:
            workgroup *= 2
        return workgroup

    def reduction_workgroup(self) -> int:
        """Workgroup size for a tree-sum pass (16 accesses per invocation, then the workgroup's tree): 256 on GPUs;
        one SIMD batch on a CPU implementation, which then never switches coroutines at the tree's barriers
        (docs/performance.md has the lavapipe sweep behind it)."""
        return WORKGROUP if self.device.type != "cpu" else self.simd_batch()

    def block_workgroup(self) -> int:
        """Workgroup size for a kernel whose invocations each compute a block of the output on their own (no shared
        memory, no barriers: matmul.comp's register blocks): 256 on GPUs. A CPU implementation (lavapipe) takes
        one SIMD batch: it runs every batch of a workgroup through the kernel, the batches past the end of the work
        too, and a 256-wide workgroup of a small product cost it ten times the product itself (docs/performance.md,
        "Kernel choices"); one-batch workgroups also spread a small grid over its threads."""
        return WORKGROUP if self.device.type != "cpu" else self.simd_batch()

    def update_accesses(self) -> int:
        """Accesses each invocation of an optimizer update (optim.comp, up to 8 parameters a dispatch) moves in turn:
        one on GPUs, where neighbouring lanes then move neighbouring addresses. Four on a CPU implementation:
        lavapipe runs every parameter's branch of that kernel, masked, for each SIMD batch, so a quarter of the
        batches costs much less (the main job's Adam over 4 parameters, lavapipe's threads off: 123 -> 71 us)."""
        return 1 if self.device.type != "cpu" else 4

    def simd_batch(self) -> int:
        """How many invocations a CPU implementation runs as one SIMD batch: its subgroup size where that is a power
        of two from 4 to WORKGROUP, else 32."""
        size = self.device.subgroup_size
        return size if 4 <= size <= WORKGROUP and size & (size - 1) == 0 else 32

    def row_workgroup(self, items: int = 0) -> int:
        """Workgroup size for a kernel whose workgroups each reduce a stretch of `items` elements in a loop (a
        cross-entropy row, a block of BCE terms), then across the workgroup with barriers.

        GPUs get 256, or for rows of at least LONG_ROW_PER_INVOCATION items per invocation of it, the widest
        workgroup: a row kernel's workgroups are its rows, and few rows in workgroups of 256 keep too few loads in
        flight to use the device's bandwidth.

        A CPU implementation (lavapipe) runs a workgroup as SIMD batches of subgroup_size invocations, switched as
        coroutines at every barrier, each batch striding over the whole stretch: a workgroup of one batch never
        switches. It grows only where the loop would otherwise run more than MAX_LOOP_PER_PASS iterations a pass."""
        if self.device.type != "cpu":
            widest = self.largest_workgroup()
            return widest if items >= LONG_ROW_PER_INVOCATION * widest else WORKGROUP
        workgroup = self.simd_batch()
        while workgroup < WORKGROUP and items > workgroup * MAX_LOOP_PER_PASS:
            workgroup *= 2
        return workgroup

    def row_once(self, vectors: int):
        """For a row kernel that holds its row in registers and so reads it once (cross_entropy_row.comp MODE_ROW_ONCE):
        (workgroup size, four-float vectors per invocation) for a row of `vectors` vec4s, or None where the kernel
        that reads the row twice serves better: a row longer than one workgroup holds (ROW_ONCE_VALUES[-1] vectors
        per invocation, at most 1,024 invocations or the device's limit); CPU implementations, where lavapipe runs a
        large workgroup as coroutines switched at every barrier; and devices without subgroup shuffles, which its
        reductions use."""
        if self.device.type == "cpu" or not self.device.subgroup_shuffle:
            return None
        limit = self.largest_workgroup()
        for values in ROW_ONCE_VALUES:
            workgroup = max(32, self.device.subgroup_size)  # whole subgroups
            while workgroup * values < vectors:
                workgroup *= 2
            if workgroup <= limit:
                return workgroup, values
        return None
