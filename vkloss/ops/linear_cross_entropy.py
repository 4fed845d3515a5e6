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
from ..registry import Backward, register_op
from . import casts
from .cross_entropy import check_index_options, index_target_checks
from .matmul import TILE, matmul_into
from .reductions import tree_sum

WORKSPACE_BYTES = 32 << 20  # one block of logits on CPU devices (lavapipe binds at most 128 MiB)
GPU_WORKSPACE_BYTES = 256 << 20  # on GPUs: blocks of hundreds of rows, so d weight's accumulation stays cheap
REDUCTIONS = ("mean", "sum")


def _bindings(mode, weighted, norm_buffer, first):
    common = ["target", *(["weight"] if weighted else []), *(["norm"] if norm_buffer else [])]
    return {"STATS": (common + ["logits", "bias"], ["stats"]),
            "LOSS": (common, ["stats", "row_loss"]),
            "GRAD": (common + ["bias", "stats"], ["logits"])}[mode]


LINEAR_CROSS_ENTROPY = Kernel(
    "linear_cross_entropy.comp", bindings=_bindings,
    switches={"mode": ("STATS", "LOSS", "GRAD"), "weighted": (False, True), "norm_buffer": (False, True),
              "first": (False, True)},
    # the mean's divisor: the gradient's scale; the loss is divided after its sum (tree_sum's divide)
    allowed=lambda mode, norm_buffer, first, **_: (mode == "GRAD" or not norm_buffer) and (mode == "STATS" or
                                                                                           not first),
    push="uint rows, uint classes, uint row_begin = 0, uint chunk_begin = 0, uint chunk = 0, float scale = 1.0, "
         "float smoothing = 0.0, int ignore_index = 0, uint ignore = 1",
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
           weight_classes=None):
    name = "linear_cross_entropy"
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
    if reduction not in REDUCTIONS:
        raise ValueError(f"{name}: reduction must be 'mean' or 'sum', got {reduction!r} ('none' would need each "
                         "row's upstream gradient inside the fused weight gradient: use matmul and "
                         "cross_entropy_loss)")
    check_index_options(name, ignore_index, label_smoothing)
    return (1,)


def _forward(ctx, hidden, weight, target, bias, reduction="mean", ignore_index=-100, label_smoothing=0.0,
             weight_classes=None):
    (rows, features), (classes, _) = ctx.shapes[0], ctx.shapes[1]
    sizes = (rows * features, classes * features, rows, classes)
    # 16-bit hidden, weight or bias: widened to float32 for the products, their gradients narrowed back at the end
    hidden, weight, bias = (casts.float32(ctx, b, sizes[i], ctx.dtypes[i]) for i, b in ((0, hidden), (1, weight),
                                                                                       (3, bias)))
    weighted, mean = weight_classes is not None, reduction == "mean"
    norm = index_target_checks(ctx, target, weight_classes, rows, classes, ignore_index, mean,
                               f"linear_cross_entropy: {{count}} class indices of target (shape ({rows},)) are "
                               f"outside {{allowed}}, beside weight ({classes}, {features})")
    push = dict(rows=rows, classes=classes, smoothing=label_smoothing, ignore_index=ignore_index)
    stats, row_loss = ctx.alloc(rows * 4), ctx.alloc(rows)
    known = dict(target=target, weight=weight_classes, stats=stats)
    grads = None
    if ctx.want_grad:
        grads = (ctx.alloc(rows * features), ctx.alloc(classes * features), ctx.alloc(classes))  # hidden, weight, bias
    per_block = rows_per_block(ctx, rows, classes)
    if per_block:
        _by_rows(ctx, hidden, weight, bias, push, known, row_loss, grads, weighted, mean, norm, per_block)
    else:
        _by_vocabulary(ctx, hidden, weight, bias, push, known, row_loss, grads, weighted, mean, norm)
    tree_sum(ctx, row_loss, rows, ctx.out, 1.0, divide=norm)  # a mean's weighted divisor: after the sum
    if grads is not None:
        ctx.save_for_backward(**{name: casts.in_dtype(ctx, g, sizes[i], ctx.dtypes[i])
                                 for name, i, g in zip(("hidden", "weight", "bias"), (0, 1, 3), grads)})


def _by_rows(ctx, hidden, weight, bias, push, known, row_loss, grads, weighted, mean, norm, per_block):
    """Blocks of whole rows: each block's logits made once, its loss, and with `grads` its share of them."""
    rows, classes = push["rows"], push["classes"]
    features = ctx.shapes[0][1]
    logits = ctx.alloc(per_block * classes)
    ones = ctx.upload(np.ones(per_block, np.float32)) if grads is not None else None
    for index, begin in enumerate(range(0, rows, per_block)):
        count = min(per_block, rows - begin)
        block = {**push, "rows": count, "row_begin": begin, "chunk": classes}
        matmul_into(ctx, hidden, weight, logits, count, classes, features, trans_b=True,
                    offsets=(begin * features, 0, 0))  # logits[count, classes] = hidden_rows @ weight.T
        ctx.dispatch(LINEAR_CROSS_ENTROPY.variant(mode="STATS", weighted=weighted, first=True), ctx.grid(count),
                     workgroup=ctx.row_workgroup(classes), push=block, logits=logits, bias=bias, **known)
        ctx.dispatch(LINEAR_CROSS_ENTROPY.variant(mode="LOSS", weighted=weighted), ctx.groups_for(count), push=block,
                     row_loss=row_loss, **known)
        if grads is None:
            continue
        grad_hidden, grad_weight, grad_bias = grads
        ctx.dispatch(LINEAR_CROSS_ENTROPY.variant(mode="GRAD", weighted=weighted, norm_buffer=mean),
                     ctx.groups_for(count * classes), push=block, norm=norm, bias=bias, logits=logits, **known)
        # logits now hold g = d(loss)/d(logits) for the block's rows
        matmul_into(ctx, logits, weight, grad_hidden, count, features, classes,
                    offsets=(0, 0, begin * features))  # d hidden_rows = g @ weight
        matmul_into(ctx, logits, hidden, grad_weight, classes, features, count, trans_a=True, accumulate=index > 0,
                    offsets=(0, begin * features, 0))  # d weight (+)= g.T @ hidden_rows
        matmul_into(ctx, ones, logits, grad_bias, 1, classes, count, accumulate=index > 0)  # d bias (+)= sum of rows


def _by_vocabulary(ctx, hidden, weight, bias, push, known, row_loss, grads, weighted, mean, norm):
    """The vocabulary in chunks for every row: statistics first, then, with `grads`, each chunk's logits again."""
    rows, classes = push["rows"], push["classes"]
    features = ctx.shapes[0][1]
    chunk = chunk_classes(ctx, rows, classes)
    chunks = [(begin, min(chunk, classes - begin)) for begin in range(0, classes, chunk)]
    logits = ctx.alloc(rows * chunk)

    def make_logits(begin, width):  # logits[rows, width] = hidden @ weight[begin:begin + width].T
        matmul_into(ctx, hidden, weight, logits, rows, width, features, trans_b=True, offsets=(0, begin * features, 0))

    for begin, width in chunks:
        make_logits(begin, width)
        ctx.dispatch(LINEAR_CROSS_ENTROPY.variant(mode="STATS", weighted=weighted, first=begin == 0), ctx.grid(rows),
                     workgroup=ctx.row_workgroup(width), push={**push, "chunk_begin": begin, "chunk": width},
                     logits=logits, bias=bias, **known)
    ctx.dispatch(LINEAR_CROSS_ENTROPY.variant(mode="LOSS", weighted=weighted), ctx.groups_for(rows), push=push,
                 row_loss=row_loss, **known)
    if grads is None:
        return
    grad_hidden, grad_weight, grad_bias = grads
    ones = ctx.upload(np.ones(rows, np.float32))
    for index, (begin, width) in enumerate(chunks):
        make_logits(begin, width)
        ctx.dispatch(LINEAR_CROSS_ENTROPY.variant(mode="GRAD", weighted=weighted, norm_buffer=mean),
                     ctx.groups_for(rows * width), push={**push, "chunk_begin": begin, "chunk": width}, norm=norm,
                     bias=bias, logits=logits, **known)
        # logits now hold g = d(loss)/d(logits) for the chunk
        matmul_into(ctx, logits, weight, grad_hidden, rows, features, width, accumulate=index > 0,
                    offsets=(0, begin * features, 0))  # d hidden (+)= g @ weight_chunk
        matmul_into(ctx, logits, hidden, grad_weight, width, features, rows, trans_a=True,
                    offsets=(0, 0, begin * features))  # d weight_chunk = g.T @ hidden
        matmul_into(ctx, ones, logits, grad_bias, 1, width, rows, offsets=(0, 0, begin))  # d bias_chunk


OPTIONS = "*, str reduction='mean', int ignore_index=-100, float label_smoothing=0.0, Tensor? weight_classes=None"
register_op(
    "linear_cross_entropy_with_bias", kernels=(LINEAR_CROSS_ENTROPY,), backward=Backward.FUSED,
    grad_inputs=("hidden", "weight", "bias"), shape=_shape, forward=_forward,
    schema=f"linear_cross_entropy_with_bias(Float hidden, Float weight, Index target, Float bias, {OPTIONS}) "
           "-> Tensor",
    doc="linear_cross_entropy with a bias tensor (which may require a gradient); see linear_cross_entropy.",
)


def _compose(g, hidden, weight, target, bias=None, **options):
    if bias is None:
        bias = g.tensor(np.zeros(weight.shape[0], np.float32))
    return g.linear_cross_entropy_with_bias(hidden, weight, target, bias, **options)


register_op(
    "linear_cross_entropy", compose=_compose,
    schema=f"linear_cross_entropy(Float hidden, Float weight, Index target, Float? bias=None, {OPTIONS}) -> Tensor",
    doc="(1,). PyTorch's F.cross_entropy(F.linear(hidden, weight, bias), target, ...): hidden [rows, features], "
        "weight [classes, features] (nn.Linear's layout), target class indices [rows] (an int32 Tensor or an "
        "integer numpy array), bias [classes]. The rows x classes logits are never held at once: the batch is taken "
        "in blocks of whole rows (their logits made once, their loss, and with a gradient d hidden for those rows, "
        "d weight and d bias added up block by block; backward hands them over), or where not one row fits, the "
        "vocabulary in chunks with an online log-sum-exp, swept twice. Device memory: the inputs, their gradients "
        "and a workspace of 32 MiB (256 MiB on GPUs). reduction 'mean' divides by the counted rows' summed class "
        "weight, as PyTorch does. hidden, weight and bias may be 16-bit tensors (float16, bfloat16): they are widened to "
        "float32 on the device (a float32 copy of each) and their gradients come back in their own dtype.",
)
