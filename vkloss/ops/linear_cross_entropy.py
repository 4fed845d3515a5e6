"""Linear cross-entropy: the last layer and the loss together, the logits never held at once.
shaders/linear_cross_entropy.comp, with the products from shaders/matmul.comp.

The batch is taken in blocks of as many rows as a workspace (workspace_bytes: 32 MiB on CPU devices, 256 MiB on
GPUs) holds whole logit rows for. For each block: its logits (hidden_rows @ weight.T), each row's statistics (max,
sum of exponentials, the target's share) and loss, then, when a gradient is wanted, d(loss)/d(logits) in place,
d hidden_rows = g @ weight, d weight += g.T @ hidden_rows and d bias += the sum of g's rows: Liger-Kernel's fused
linear cross-entropy, as Vulkan kernels, with three products per block and no logit made twice.
Where not even one row fits, the vocabulary is taken in chunks for every row instead: a first sweep folds each
chunk's logits into running statistics (an online log-sum-exp), a second makes them again for the gradients.
Device memory is the inputs, their gradients and the workspace, whatever rows x classes is.
"""
from __future__ import annotations

import numpy as np

from ..kernels import Kernel
from ..implementations import Composed, ForwardKernel, FusedKernel
from ..registry import register_op
from ..tensor import dtype_name
from . import casts
from .cross_entropy import (LIGER_OPTIONS, check_index_options, check_liger_options, index_target_checks,
                            spec_constants)
from .matmul import TILE, matmul_into
from .reductions import tree_sum

WORKSPACE_BYTES = 32 << 20  # one block of logits on CPU devices (lavapipe binds at most 128 MiB)
GPU_WORKSPACE_BYTES = 256 << 20  # on GPUs: blocks of hundreds of rows, so d weight's accumulation stays cheap


def _bindings(mode, weighted, norm_buffer, first, row_scale, z_rows):
    common = ["target", *(["weight"] if weighted else []), *(["norm"] if norm_buffer else [])]
    return {"STATS": (common + ["logits", "bias"], ["stats"]),
            "LOSS": (common, ["stats", "row_loss", *(["row_z"] if z_rows else [])]),
            "GRAD": (common + ["bias", "stats", *(["row_scale"] if row_scale else [])], ["logits"])}[mode]


def _allowed(mode, weighted, norm_buffer, first, row_scale, z_rows):
    # the mean's divisor, or each row's upstream gradient (reduction='none'): the gradient's scale; the loss is
    # divided after its sum (tree_sum's divide)
    return ((mode == "GRAD" or not (norm_buffer or row_scale)) and not (norm_buffer and row_scale)
            and (mode == "STATS" or not first) and (mode == "LOSS" and not weighted or not z_rows))


LINEAR_CROSS_ENTROPY = Kernel(
    "linear_cross_entropy.comp", bindings=_bindings, allowed=_allowed,
    switches={"mode": ("STATS", "LOSS", "GRAD"),
              **{flag: (False, True) for flag in ("weighted", "norm_buffer", "first", "row_scale", "z_rows")}},
    push="uint rows, uint classes, uint row_begin = 0, uint chunk_begin = 0, uint chunk = 0, float scale = 1.0, "
         "float smoothing = 0.0, int ignore_index = 0, uint ignore = 1, float softcap = 0.0, float z_scale = 0.0",
)


def workspace_bytes(device) -> int:
    """The bytes one block of logits may take: WORKSPACE_BYTES, or GPU_WORKSPACE_BYTES on GPUs, within one storage
    binding and 1/16 of the device's memory."""
    size = WORKSPACE_BYTES if device.type == "cpu" else GPU_WORKSPACE_BYTES
    return min(size, device.max_storage_buffer_range, max(device.device_memory // 16, WORKSPACE_BYTES))


def rows_per_block(ctx, rows: int, classes: int) -> int:
    """Whole logit rows the workspace holds (a multiple of the matmul tile where it holds more than a tile's), all
    `rows` where they fit, or 0 where not even one row does."""
    fit = workspace_bytes(ctx.device) // (4 * classes)
    if fit >= rows:
        return rows
    return fit - fit % TILE if fit >= TILE else fit


def chunk_classes(ctx, rows: int, classes: int) -> int:
    """Classes per chunk of the vocabulary for every row (where not even one whole row fits the workspace)."""
    return max(1, min(classes, workspace_bytes(ctx.device) // (4 * rows)))


def _shape(hidden, weight, target, bias, reduction="mean", ignore_index=-100, label_smoothing=0.0,
           weight_classes=None, lse_square_scale=0.0, softcap=None, return_z_loss=False, *,
           name="linear_cross_entropy"):
    if len(hidden) != 2 or len(weight) != 2 or hidden[1] != weight[1]:
        raise ValueError(f"{name}: needs hidden [rows, features] and weight [classes, features] (nn.Linear's "
                         f"layout); got hidden {hidden} and weight {weight}")
    rows, classes = hidden[0], weight[0]
    if target != (rows,):
        raise ValueError(f"{name}: target must be class indices [rows] = ({rows},); got {target} beside hidden "
                         f"{hidden}")
    if bias != (classes,):
        raise ValueError(f"{name}: bias must have shape ({classes},), one per class; got {bias} beside weight {weight}")
    if weight_classes is not None and weight_classes != (classes,):
        raise ValueError(f"{name}: weight_classes must have shape ({classes},); got {weight_classes}")
    check_index_options(name, ignore_index, label_smoothing)
    check_liger_options(name, lse_square_scale, softcap, weight_classes is not None)
    loss = (rows,) if reduction == "none" else (1,)
    return (loss, loss) if return_z_loss else loss


def _forward(ctx, hidden, weight, target, bias, reduction="mean", ignore_index=-100, label_smoothing=0.0,
             weight_classes=None, lse_square_scale=0.0, softcap=None, return_z_loss=False):
    rows = ctx.shapes[0][0]
    reduced = reduction != "none"  # 'none': linear_cross_entropy_rows, whose backward sweeps again
    row_loss = ctx.alloc(rows) if reduced else ctx.out
    row_z = (ctx.alloc(rows) if reduced else ctx.outs[1]) if return_z_loss else None
    sweep = Sweep(ctx, hidden, weight, bias, target, weight_classes, ignore_index, label_smoothing, lse_square_scale,
                  softcap, mean=reduction == "mean")
    grads = sweep.gradients() if ctx.want_grad else None
    sweep.run(row_loss, row_z, grads)
    if reduced:
        tree_sum(ctx, row_loss, rows, ctx.out, 1.0, divide=sweep.norm)  # a mean's weighted divisor: after the sum
        if row_z is not None:
            tree_sum(ctx, row_z, rows, ctx.outs[1], 1.0, divide=sweep.norm)
    if grads is not None:
        ctx.save_for_backward(**sweep.in_dtypes(grads))


class Sweep:
    """One linear cross-entropy over the batch: its operands widened to float32, the check of its class indices (and
    a mean's divisor, `norm`), then blocks of whole rows, or chunks of the vocabulary for every row, each with its
    losses and, given gradient buffers, its gradients (scaled per row by `row_scale`, reduction='none')."""

    def __init__(self, ctx, hidden, weight, bias, target, weight_classes, ignore_index, label_smoothing,
                 lse_square_scale, softcap, mean: bool, first: int = 0, check: bool = True):
        self.ctx = ctx
        shapes, self.dtypes = ctx.shapes[first:first + 4], ctx.dtypes[first:first + 4]  # hidden, weight, target, bias
        (self.rows, self.features), self.classes = shapes[0], shapes[1][0]
        self.sizes = (self.rows * self.features, self.classes * self.features, self.rows, self.classes)
        # 16-bit hidden, weight or bias: widened to float32 for the products, their gradients narrowed at the end
        self.hidden, self.weight, self.bias = (casts.float32(ctx, b, self.sizes[i], self.dtypes[i])
                                               for i, b in ((0, hidden), (1, weight), (3, bias)))
        self.norm = None
        if check:
            self.norm = index_target_checks(
                ctx, target, weight_classes, self.rows, self.classes, ignore_index, mean,
                f"linear_cross_entropy: {{count}} class indices of target (shape ({self.rows},)) are outside "
                f"{{allowed}}, beside weight ({self.classes}, {self.features})")
        self.push = dict(rows=self.rows, classes=self.classes, smoothing=label_smoothing, ignore_index=ignore_index,
                         softcap=softcap or 0.0, z_scale=lse_square_scale)
        self.weighted = weight_classes is not None
        self.cap = spec_constants(softcap)  # STATS and GRAD read the logits
        self.known = dict(target=target, weight=weight_classes)

    def gradients(self) -> tuple:
        """float32 buffers for d hidden, d weight and d bias."""
        return tuple(self.ctx.alloc(self.sizes[i]) for i in (0, 1, 3))

    def in_dtypes(self, grads) -> dict:
        """The gradients by operand name, each in its operand's dtype."""
        return {name: casts.in_dtype(self.ctx, g, self.sizes[i], self.dtypes[i])
                for name, i, g in zip(("hidden", "weight", "bias"), (0, 1, 3), grads)}

    def run(self, row_loss, row_z=None, grads=None, row_scale=None) -> None:
        """Each row's loss into row_loss (and z-loss into row_z); with grads, the gradients too."""
        stats = self.ctx.alloc(self.rows * 4)
        known = dict(self.known, stats=stats)
        losses = dict(row_loss=row_loss, row_z=row_z)
        per_block = rows_per_block(self.ctx, self.rows, self.classes)
        if per_block:
            self._by_rows(known, losses, grads, row_scale, per_block)
        else:
            self._by_vocabulary(known, losses, grads, row_scale)

    def _variant(self, mode, **switches):
        return LINEAR_CROSS_ENTROPY.variant(mode=mode, weighted=self.weighted, **switches)

    def _loss(self, known, losses, push, count):
        self.ctx.dispatch(self._variant("LOSS", z_rows=losses["row_z"] is not None), self.ctx.groups_for(count),
                          push=push, **losses, **known)

    def _grad(self, known, push, count, logits, row_scale):
        self.ctx.dispatch(self._variant("GRAD", norm_buffer=self.norm is not None, row_scale=row_scale is not None),
                          self.ctx.groups_for(count), constants=self.cap, push=push, norm=self.norm,
                          row_scale=row_scale, bias=self.bias, logits=logits, **known)

    def _by_rows(self, known, losses, grads, row_scale, per_block):
        """Blocks of whole rows: each block's logits made once, its loss, and with `grads` its share of them."""
        ctx, rows, classes, features = self.ctx, self.rows, self.classes, self.features
        hidden, weight = self.hidden, self.weight
        logits = ctx.alloc(per_block * classes)
        ones = ctx.upload(np.ones(per_block, np.float32)) if grads is not None else None
        for index, begin in enumerate(range(0, rows, per_block)):
            count = min(per_block, rows - begin)
            block = {**self.push, "rows": count, "row_begin": begin, "chunk": classes}
            matmul_into(ctx, hidden, weight, logits, count, classes, features, trans_b=True,
                        offsets=(begin * features, 0, 0))  # logits[count, classes] = hidden_rows @ weight.T
            ctx.dispatch(self._variant("STATS", first=True), ctx.grid(count), workgroup=ctx.row_workgroup(classes),
                         constants=self.cap, push=block, logits=logits, bias=self.bias, **known)
            self._loss(known, losses, block, count)
            if grads is None:
                continue
            grad_hidden, grad_weight, grad_bias = grads
            self._grad(known, block, count * classes, logits, row_scale)
            # logits now hold g = d(loss)/d(logits) for the block's rows
            matmul_into(ctx, logits, weight, grad_hidden, count, features, classes,
                        offsets=(0, 0, begin * features))  # d hidden_rows = g @ weight
            matmul_into(ctx, logits, hidden, grad_weight, classes, features, count, trans_a=True,
                        accumulate=index > 0, offsets=(0, begin * features, 0))  # d weight (+)= g.T @ hidden_rows
            matmul_into(ctx, ones, logits, grad_bias, 1, classes, count, accumulate=index > 0)  # d bias (+)= rows

    def _by_vocabulary(self, known, losses, grads, row_scale):
        """The vocabulary in chunks for every row: statistics first, then, with `grads`, each chunk's logits again."""
        ctx, rows, classes, features = self.ctx, self.rows, self.classes, self.features
        hidden, weight = self.hidden, self.weight
        chunk = chunk_classes(ctx, rows, classes)
        chunks = [(begin, min(chunk, classes - begin)) for begin in range(0, classes, chunk)]
        logits = ctx.alloc(rows * chunk)

        def make_logits(begin, width):  # logits[rows, width] = hidden @ weight[begin:begin + width].T
            matmul_into(ctx, hidden, weight, logits, rows, width, features, trans_b=True,
                        offsets=(0, begin * features, 0))

        for begin, width in chunks:
            make_logits(begin, width)
            ctx.dispatch(self._variant("STATS", first=begin == 0), ctx.grid(rows), workgroup=ctx.row_workgroup(width),
                         constants=self.cap, push={**self.push, "chunk_begin": begin, "chunk": width}, logits=logits,
                         bias=self.bias, **known)
        self._loss(known, losses, self.push, rows)
        if grads is None:
            return
        grad_hidden, grad_weight, grad_bias = grads
        ones = ctx.upload(np.ones(rows, np.float32))
        for index, (begin, width) in enumerate(chunks):
            make_logits(begin, width)
            self._grad(known, {**self.push, "chunk_begin": begin, "chunk": width}, rows * width, logits, row_scale)
            # logits now hold g = d(loss)/d(logits) for the chunk
            matmul_into(ctx, logits, weight, grad_hidden, rows, features, width, accumulate=index > 0,
                        offsets=(0, begin * features, 0))  # d hidden (+)= g @ weight_chunk
            matmul_into(ctx, logits, hidden, grad_weight, width, features, rows, trans_a=True,
                        offsets=(0, 0, begin * features))  # d weight_chunk = g.T @ hidden
            matmul_into(ctx, ones, logits, grad_bias, 1, width, rows, offsets=(0, 0, begin))  # d bias_chunk


def _rows_backward(ctx, grad):
    """reduction='none': each row's upstream gradient scales its logits' gradient inside the sweep, so the sweep
    runs again (linear_cross_entropy_backward); float32 gradients, back in the operands' dtypes."""
    hidden, weight, target, bias = ctx.inputs
    options = {name: ctx.attrs[name] for name in BACKWARD_OPTIONS}
    grads = ctx.g.ops.linear_cross_entropy_backward(grad, hidden, weight, target, bias, **options)
    return tuple(None if t is None or not need else ctx.g.astype(d, dtype=dtype_name(t.dtype))
                 for t, need, d in zip(ctx.inputs, ctx.needs, (grads[0], grads[1], None, grads[2])))


def _backward_forward(ctx, grad, hidden, weight, target, bias, ignore_index=-100, label_smoothing=0.0,
                      weight_classes=None, lse_square_scale=0.0, softcap=None):
    sweep = Sweep(ctx, hidden, weight, bias, target, weight_classes, ignore_index, label_smoothing, lse_square_scale,
                  softcap, mean=False, first=1, check=False)  # the forward checked the class indices
    sweep.run(ctx.alloc(sweep.rows), None, ctx.outs, row_scale=grad)


def _backward_shape(grad, hidden, weight, target, bias, **options):
    if grad != (hidden[0],):
        raise ValueError(f"linear_cross_entropy_backward: grad {grad} must be one per row of hidden {hidden}")
    _shape(hidden, weight, target, bias, **options, name="linear_cross_entropy_backward")
    return hidden, weight, bias


BACKWARD_OPTIONS = ("ignore_index", "label_smoothing", "weight_classes", "lse_square_scale", "softcap")
OPTIONS = ("int ignore_index=-100, float label_smoothing=0.0, Tensor? weight_classes=None, "
           "float lse_square_scale=0.0, float? softcap=None")
OPERANDS = "Float hidden, Float weight, Index target, Float bias"
register_op(
    f"linear_cross_entropy_with_bias({OPERANDS}, *, str{{mean|sum}} reduction='mean', {OPTIONS}, "
    "bool return_z_loss=False) -> (Tensor, Tensor)",
    FusedKernel(shape=_shape, forward=_forward, kernels=(LINEAR_CROSS_ENTROPY,),
                grad_inputs=("hidden", "weight", "bias"), outputs_option="return_z_loss"),
    doc="linear_cross_entropy with a bias tensor (which may require a gradient), reduced; see linear_cross_entropy.",
)
register_op(
    f"linear_cross_entropy_rows({OPERANDS}, *, {OPTIONS}, bool return_z_loss=False) -> (Tensor, Tensor)",
    ForwardKernel(shape=lambda *shapes, **options: _shape(*shapes, reduction="none", **options),
                  forward=lambda ctx, *buffers, **options: _forward(ctx, *buffers, reduction="none", **options),
                  backward=_rows_backward, kernels=(LINEAR_CROSS_ENTROPY,), outputs_option="return_z_loss"),
    doc="[rows]: linear_cross_entropy_with_bias's loss of each row (reduction='none'). Its backward scales each "
        "row's gradient by the upstream one inside a second sweep (linear_cross_entropy_backward): the fused weight "
        "gradient cannot be scaled per row afterwards.",
)
register_op(
    f"linear_cross_entropy_backward(Tensor grad, {OPERANDS}, *, {OPTIONS}) -> (Tensor, Tensor, Tensor)",
    ForwardKernel(shape=_backward_shape, forward=_backward_forward, kernels=(LINEAR_CROSS_ENTROPY,)), internal=True,
    doc="float32 (d hidden, d weight, d bias) of linear_cross_entropy_rows for the upstream gradient grad [rows].",
)


def _compose(g, hidden, weight, target, bias=None, reduction="mean", **options):
    if bias is None:
        bias = g.tensor(np.zeros(weight.shape[0], np.float32))
    if reduction == "none":
        return g.linear_cross_entropy_rows(hidden, weight, target, bias, **options)
    return g.linear_cross_entropy_with_bias(hidden, weight, target, bias, reduction=reduction, **options)


register_op(
    f"linear_cross_entropy(Float hidden, Float weight, Index target, Float? bias=None, *, "
    f"str{{mean|sum|none}} reduction='mean', {OPTIONS}, bool return_z_loss=False) -> (Tensor, Tensor)",
    Composed(_compose, outputs_option="return_z_loss"),
    doc="(1,), or [rows] for reduction='none'. PyTorch's F.cross_entropy(F.linear(hidden, weight, bias), target, "
        "...), Liger-Kernel's LigerFusedLinearCrossEntropyLoss: hidden [rows, features], "
        "weight [classes, features] (nn.Linear's layout), target class indices [rows] (an int32 Tensor or an "
        "integer numpy array), bias [classes]. The rows x classes logits are never held at once: the batch is taken "
        "in blocks of whole rows (their logits made once, their loss, and with a gradient d hidden for those rows, "
        "d weight and d bias added up block by block; backward hands them over), or where not one row fits, the "
        "vocabulary in chunks with an online log-sum-exp, swept twice. Device memory: the inputs, their gradients "
        "and a workspace of 32 MiB (256 MiB on GPUs). reduction 'mean' divides by the counted rows' summed class "
        "weight, as PyTorch does; 'none' gives each row's loss, and its backward sweeps a second time (each row's "
        "upstream gradient scales its logits' gradient before the products). hidden, weight and bias may be 16-bit "
        "tensors (float16, bfloat16): they are widened to float32 on the device (a float32 copy of each) and their "
        "gradients come back in their own dtype. " + LIGER_OPTIONS,
)
