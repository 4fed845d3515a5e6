"""Cross-entropy: a fused kernel family (shaders/cross_entropy_row.comp and cross_entropy_chunked.comp, over
shaders/include/cross_entropy.glsl) that computes the loss and its gradient in one pass, PyTorch's F.cross_entropy
with every option."""
from __future__ import annotations

import math

import numpy as np

from ..launch import WORKGROUP, ceil_div
from ..kernels import Kernel
from ..implementations import FusedKernel
from ..registry import register_op
from ..tensor import packed_words
from . import casts
from .reductions import tree_sum

SMALL_ROW = 64  # classes up to which one invocation handles a whole row
ROW_LIMIT = 1 << 18  # classes up to which one workgroup handles a row: 2 passes of at most 2^11 iterations each
                     # (LaunchPolicy.row_workgroup widens the workgroup to keep them there)
CHUNK = 64 * WORKGROUP  # classes one workgroup reduces in the chunked path: 64 loop iterations per invocation
MODES = ("SMALL", "ROW", "ROW_ONCE", "STATS", "COMBINE", "GRAD", "ROW_WEIGHT", "ROW_Z")
ROW_MODES = ("SMALL", "ROW", "ROW_ONCE", "COMBINE")  # one row loss per row: with class indices, they flag bad ones


def _allowed(mode, target_index, weighted, norm_buffer, write_grad, inplace, vec4, storage, wide):
    if (norm_buffer and not target_index) or (inplace and not write_grad):
        return False
    if mode == "ROW_Z":  # the z-loss alone, one workgroup per row (any storage)
        return not (weighted or norm_buffer or write_grad or inplace or vec4 or wide)
    if wide and not (mode == "ROW" and vec4):  # eight classes per access (32 or 16 bytes): ROW only
        return False
    if mode != "ROW" and vec4 != (mode == "ROW_ONCE"):  # ROW reads one or four classes at a time, ROW_ONCE four
        return False
    if storage != "F32" and mode not in ("STATS", "GRAD", "ROW_ONCE") and not (mode == "ROW" and vec4):
        return False  # 16-bit logits: four classes at a time in a row kernel, else the chunked path
    return {"ROW_WEIGHT": target_index and not (norm_buffer or write_grad),
            "STATS": not (norm_buffer or write_grad),
            "COMBINE": not (weighted or write_grad),
            "GRAD": write_grad}.get(mode, True)


def _bindings(mode, target_index, weighted, norm_buffer, write_grad, inplace, vec4, storage, wide):
    norm = ["norm"] if norm_buffer else []
    if mode == "COMBINE":
        return (["partials", *(["target"] if target_index else []), *norm],
                ["row_loss", "row_stats", *(["bad"] if target_index else [])])
    if mode == "ROW_Z":
        return ["pred", "target"], ["row_z"]
    logits = [] if inplace or mode == "ROW_WEIGHT" else ["pred"]
    reads = logits + ["target"] + (["weight"] if weighted else []) + norm + (["row_stats"] if mode == "GRAD" else [])
    writes = {"ROW_WEIGHT": ["row_weight", "bad"], "STATS": ["partials"], "GRAD": []}.get(mode, ["row_loss"])
    flags = ["bad"] if target_index and mode in ROW_MODES else []  # each row's class index outside [0, classes)
    return reads, writes + flags + ([("pred" if inplace else "grad")] if write_grad else [])


def _kernel(source: str, modes: tuple) -> Kernel:
    return Kernel(source, allowed=_allowed, bindings=_bindings,
                  switches={"mode": modes, **{flag: (False, True) for flag in (
                      "target_index", "weighted", "norm_buffer", "write_grad", "inplace", "vec4", "wide")},
                            "storage": ("F32", "F16", "BF16")},
                  push="uint rows, uint classes, uint chunks = 1, uint chunk = 0, float scale = 1.0, "
                       "float smoothing = 0.0, int ignore_index = 0, uint ignore = 0, float softcap = 0.0, "
                       "float z_scale = 0.0, uint class_offset = 0, uint total_classes = 0, uint sum_rows = 0, "
                       "float partial_scale = 1.0")


# two files over one header (shaders/include/cross_entropy.glsl): a row at a time, and a row in chunks
ROW_KERNELS = _kernel("cross_entropy_row.comp", ("SMALL", "ROW", "ROW_ONCE", "ROW_WEIGHT", "ROW_Z"))
CHUNKED_KERNELS = _kernel("cross_entropy_chunked.comp", ("STATS", "COMBINE", "GRAD"))
KERNELS = (ROW_KERNELS, CHUNKED_KERNELS)
_KERNEL_OF_MODE = {mode: kernel for kernel in KERNELS for mode in kernel.switches["mode"]}
assert set(_KERNEL_OF_MODE) == set(MODES)


def variant(mode: str, **switches):
    """The cross-entropy kernel variant of this mode, from the file that holds the mode."""
    return _KERNEL_OF_MODE[mode].variant(mode=mode, **switches)


def _shape(pred, target, weight=None, reduction="mean", ignore_index=-100, label_smoothing=0.0, inplace_grad=False,
           lse_square_scale=0.0, softcap=None, return_z_loss=False):
    if len(pred) != 2 or (target != pred and target != pred[:1]):
        raise ValueError(f"cross_entropy_loss: needs logits [batch, classes] and a target of the same shape "
                         f"(probabilities) or of shape [batch] (class indices); got pred {pred} and target {target}")
    if weight is not None and weight != pred[1:]:
        raise ValueError(f"cross_entropy_loss: weight must have shape ({pred[1]},), one per class; got {weight} "
                         f"beside pred {pred}")
    check_index_options("cross_entropy_loss", ignore_index, label_smoothing)
    check_liger_options("cross_entropy_loss", lse_square_scale, softcap, weight is not None)
    if ignore_index is not None and ignore_index >= 0 and target == pred:  # PyTorch's rule: a negative one is unused
        raise ValueError(f"cross_entropy_loss: ignore_index applies to class-index targets [batch]; the target "
                         f"{target} holds probabilities (as in PyTorch)")
    loss = (pred[0],) if reduction == "none" else (1,)
    return (loss, loss) if return_z_loss else loss


def check_liger_options(name, lse_square_scale, softcap, weighted: bool):
    """Liger-Kernel's z-loss scale (finite) and softcap (None or positive and finite)."""
    if not math.isfinite(lse_square_scale):
        raise ValueError(f"{name}: lse_square_scale must be finite, got {lse_square_scale!r}")
    if softcap is not None and not (math.isfinite(softcap) and softcap > 0):
        raise ValueError(f"{name}: softcap must be None or a positive finite number, got {softcap!r}")
    if weighted and lse_square_scale != 0.0:
        raise ValueError(f"{name}: lse_square_scale with class weights is not supported (Liger's reference divides the "
                         "z-loss by the counted rows and the loss by their summed weights, two divisors)")


def check_index_options(name, ignore_index, label_smoothing):
    """ignore_index (None or within int32) and label_smoothing (in [0, 1]), as every cross-entropy op takes them
    (their types the schema checked)."""
    if ignore_index is not None and not np.iinfo(np.int32).min <= ignore_index <= np.iinfo(np.int32).max:
        raise ValueError(f"{name}: ignore_index {ignore_index} does not fit int32")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{name}: label_smoothing must be a number in [0, 1], got {label_smoothing!r}")


def _forward(ctx, pred, target, weight=None, reduction="mean", ignore_index=-100, label_smoothing=0.0,
             inplace_grad=False, lse_square_scale=0.0, softcap=None, return_z_loss=False):
    (rows, classes), target_shape = ctx.shapes
    index = len(target_shape) == 1
    if index != (target.dtype == np.int32):
        raise TypeError(f"cross_entropy_loss: a target of shape {target_shape} beside pred {ctx.shapes[0]} must be "
                        + ("integer class indices: an int32 tensor (g.tensor(labels, dtype=np.int32)) or an "
                           "integer numpy array" if index else "float32 probabilities, not int32"))
    if not index:
        ignore_index = None  # probabilities have no index to ignore
    want_grad = ctx.want_grad
    inplace = want_grad and inplace_grad
    storage = casts.storage(ctx.dtypes[0])  # 16-bit logits are read (and their gradient written) two to a word
    # PyTorch's mean divides by the counted rows' summed class weights with class indices: a buffer the device sums
    # first where class weights or ignore_index make it other than `rows`
    norm = (row_weight_sum(ctx, target, weight, rows, classes, ignore_index)
            if index and reduction == "mean" and (weight is not None or ignore_index is not None) else None)
    scale = 1.0 / rows if reduction == "mean" and norm is None else 1.0
    push = dict(rows=rows, classes=classes, chunk=classes, scale=scale, smoothing=label_smoothing,
                ignore_index=ignore_index or 0, ignore=ignore_index is not None, softcap=softcap or 0.0,
                z_scale=lse_square_scale)
    cap = spec_constants(softcap)  # every kernel below that reads the logits
    if return_z_loss:  # the z-loss alone, before a gradient written in place overwrites the logits
        z_out = ctx.outs[1] if reduction == "none" else ctx.alloc(rows)
        ctx.dispatch(variant("ROW_Z", target_index=index, storage=storage), ctx.grid(rows),
                     workgroup=ctx.row_workgroup(classes), constants=cap, push=push, pred=pred, target=target,
                     row_z=z_out)
        if reduction != "none":
            tree_sum(ctx, z_out, rows, ctx.outs[1], 1.0 if norm is not None else scale, divide=norm)
    small = classes <= SMALL_ROW and storage == "F32"
    # rows that one workgroup holds (a row an invocation): it sums their losses and bad flags itself, and no tree sum
    # follows (a dispatch fewer, on every device)
    summed = small and reduction != "none" and norm is None and rows <= WORKGROUP
    row_loss = ctx.out if reduction == "none" or summed else ctx.alloc(rows)
    bad = ctx.alloc(1 if summed else rows) if index else None  # the row kernels flag class indices out of range
    grad = casts.alloc(ctx, rows * classes, storage) if want_grad and not inplace else None
    switches = dict(target_index=index, weighted=weight is not None, norm_buffer=norm is not None)
    buffers = dict(pred=pred, target=target, weight=weight, norm=norm, grad=grad)
    if small:
        # summed: a workgroup just big enough (its tree sum takes log2 of it barriers, each a switch of all its SIMD
        # batches on lavapipe)
        workgroup = max(8, 1 << (rows - 1).bit_length()) if summed else WORKGROUP
        ctx.dispatch(variant("SMALL", write_grad=want_grad, inplace=inplace, **switches),
                     ctx.groups_for(rows, workgroup), workgroup=workgroup, constants=cap,
                     push=dict(push, sum_rows=summed, partial_scale=scale if summed else 1.0),
                     row_loss=row_loss, bad=bad, **buffers)
    elif classes <= ROW_LIMIT and (storage == "F32" or classes % 4 == 0):
        _one_row_a_workgroup(ctx, rows, classes, storage, softcap, dict(write_grad=want_grad, inplace=inplace,
                                                                        **switches),
                             dict(push=push, row_loss=row_loss, bad=bad, **buffers))
    else:
        _rows_in_chunks(ctx, rows, classes, storage, cap, switches, inplace, push, buffers, row_loss, bad)
    if index:
        count_bad(ctx, bad, 1 if summed else rows, classes, ignore_index, f"cross_entropy_loss: {{count}} class "
                  f"indices of target (shape {target_shape}) are outside {{allowed}}, beside pred {ctx.shapes[0]}")
    if reduction != "none" and not summed:
        tree_sum(ctx, row_loss, rows, ctx.out, 1.0 if norm is not None else scale, divide=norm)
    if want_grad:
        ctx.save_for_backward(pred if inplace else grad)


def _one_row_a_workgroup(ctx, rows: int, classes: int, storage: str, softcap, switches: dict, bound: dict) -> None:
    """MODE_ROW, or on GPUs MODE_ROW_ONCE (the row held in registers), four or eight classes an access where the
    row's length allows."""
    vec4 = classes % 4 == 0  # rows start on 16-byte (16-bit: 8-byte) boundaries: load four classes at a time
    wide = ctx.wide_loads(classes)  # or eight (float32: 32 bytes, 16-bit: 16), on CPU devices
    once = ctx.row_once(classes // 4) if vec4 else None  # the row held in registers: read once
    if once:
        workgroup, constants = once[0], spec_constants(softcap, once[1])
    else:
        workgroup, constants = ctx.row_workgroup(classes // (8 if wide else 4 if vec4 else 1)), spec_constants(softcap)
    ctx.dispatch(variant("ROW_ONCE" if once else "ROW", vec4=vec4, storage=storage, wide=wide and not once, **switches),
                 ctx.grid(rows), workgroup=workgroup, constants=constants, **bound)


def _rows_in_chunks(ctx, rows, classes, storage, cap, switches, inplace, push, buffers, row_loss, bad) -> None:
    """The chunked kernels: each row's chunks' statistics, merged per row into its loss, then the gradient."""
    chunks = ceil_div(classes, CHUNK)
    push = dict(push, chunks=chunks, chunk=ceil_div(classes, chunks * WORKGROUP) * WORKGROUP)  # whole workgroups
    partials, row_stats = ctx.alloc(rows * chunks * 4), ctx.alloc(rows * 4)
    index, pred, target, weight, norm = (switches["target_index"], buffers["pred"], buffers["target"],
                                         buffers["weight"], buffers["norm"])
    ctx.dispatch(variant("STATS", target_index=index, weighted=weight is not None, storage=storage),
                 ctx.grid(rows * chunks), constants=cap, push=push, pred=pred, target=target, weight=weight,
                 partials=partials)
    ctx.dispatch(variant("COMBINE", target_index=index, norm_buffer=norm is not None),
                 ctx.groups_for(rows), push=push, partials=partials, target=target if index else None, norm=norm,
                 row_loss=row_loss, row_stats=row_stats, bad=bad)
    if ctx.want_grad:
        ctx.dispatch(variant("GRAD", write_grad=True, inplace=inplace, storage=storage, **switches),
                     ctx.groups_for(rows * classes if storage == "F32" else packed_words(rows * classes)),
                     constants=cap, push=push, row_stats=row_stats, **buffers)


def spec_constants(softcap, values: int = 0) -> tuple:
    """The specialization constants after the workgroup size, (VALUES, SOFTCAP), for a kernel that reads logits:
    () or (values,) where softcap is off, so such kernels are the ones they were without it."""
    if softcap:
        return values, 1
    return (values,) if values else ()


def count_bad(ctx, bad, rows: int, classes: int, ignore_index, message: str) -> None:
    """The device-side check of class indices outside [0, classes) that are not ignore_index, from per-row flags in
    `bad` (message with {count} and {allowed}); rows=1: `bad` holds the count already."""
    bad_count = bad
    if rows > 1:
        bad_count = ctx.alloc(1)
        tree_sum(ctx, bad, rows, bad_count, 1.0)
    allowed = f"[0, {classes})" + (f" or ignore_index {ignore_index}" if ignore_index is not None else "")
    ctx.check(bad_count, message.replace("{allowed}", allowed))


def row_weight_sum(ctx, target, weight, rows: int, classes: int, ignore_index, bad=None):
    """A one-value buffer of PyTorch's mean divisor for class indices [rows]: the counted rows' summed weight[target].
    The same pass flags bad indices per row into `bad` (given where no row kernel flags them)."""
    row_weight, norm = ctx.alloc(rows), ctx.alloc(1)
    _row_weights(ctx, target, weight, rows, classes, ignore_index, row_weight, ctx.alloc(rows) if bad is None else bad)
    tree_sum(ctx, row_weight, rows, norm, 1.0)
    return norm


def _row_weights(ctx, target, weight, rows, classes, ignore_index, row_weight, bad) -> None:
    ctx.dispatch(variant("ROW_WEIGHT", target_index=True, weighted=weight is not None),
                 ctx.groups_for(rows), push=dict(rows=rows, classes=classes, ignore_index=ignore_index or 0,
                                                 ignore=ignore_index is not None),
                 target=target, weight=weight, row_weight=row_weight, bad=bad)


def index_target_checks(ctx, target, weight, rows: int, classes: int, ignore_index, want_norm: bool, message: str):
    """For class-index targets [rows]: the device-side check of indices outside [0, classes) that are not
    ignore_index (message with {count} and {allowed}), and, with want_norm, a one-value buffer of PyTorch's mean
    divisor, the counted rows' summed weight[target] (else None)."""
    bad = ctx.alloc(rows)
    if want_norm:
        norm = row_weight_sum(ctx, target, weight, rows, classes, ignore_index, bad=bad)
    else:
        norm = None
        _row_weights(ctx, target, weight, rows, classes, ignore_index, ctx.alloc(rows), bad)
    count_bad(ctx, bad, rows, classes, ignore_index, message)
    return norm


LIGER_OPTIONS = (
    "Liger-Kernel's options, in the same kernels: softcap (Gemma 2's) reads each logit as softcap tanh(logit / "
    "softcap), its gradient through the tanh; lse_square_scale adds the z-loss lse_square_scale logsumexp(row)^2 "
    "to each counted row's loss (divided as the loss is: by the counted rows for a mean; not with class weights), "
    "with its gradient. return_z_loss=True returns (loss, z_loss), the z-loss alone (its share of the loss, not "
    "differentiable), as Liger's LigerCrossEntropyLoss does.")


register_op(
    "cross_entropy_loss(Float pred, Tensor|Index target, *, Tensor? weight=None, "
    "str{mean|sum|none} reduction='mean', int? ignore_index=-100, float label_smoothing=0.0, "
    "bool inplace_grad=False, float lse_square_scale=0.0, float? softcap=None, bool return_z_loss=False) "
    "-> (Tensor, Tensor)",
    FusedKernel(shape=_shape, forward=_forward, kernels=KERNELS, inplace_option="inplace_grad",
                outputs_option="return_z_loss"),
    doc="(1,), or [batch] for reduction='none'. PyTorch's F.cross_entropy. pred are logits [batch, classes]; target "
        "is a distribution of the same shape (one-hot or soft; rows need not sum to 1) or class indices [batch] (an "
        "int32 Tensor or an integer numpy array, read directly by the kernel). Per row, loss = sum_c a_c "
        "(logsumexp(pred) - pred_c) with a_c = weight_c (t_c (1 - label_smoothing) + label_smoothing / classes), t "
        "the target row or the one-hot of its index; rows whose index is ignore_index (default -100, PyTorch's "
        "padding label; None: none) count for nothing. 'mean' divides by batch for probability targets and by the "
        "summed weight[target] of the counted rows for index targets, as PyTorch does: where that sum is 0 (every "
        "row ignored, zero weights, weights that cancel) the loss is NaN or +-inf and the counted rows' gradient "
        "NaN or +-inf, as PyTorch's (which of NaN and inf an element of that gradient gets may differ). One fused "
        "kernel family computes the loss and d/dpred = "
        "(softmax(pred) sum_c a_c - a) / that divisor in the same pass (log-sum-exp relative to the row maximum); "
        "backward scales that. inplace_grad=True writes the gradient over pred's buffer (pred must be an op's "
        "output and cannot be read afterwards), so the loss adds no buffer of pred's size. Class indices outside "
        "[0, classes) raise ValueError at the next host read. No gradient with respect to target or weight. pred "
        "may be a 16-bit tensor (float16, bfloat16): the kernels read it two values to a 32-bit word, compute in float32, "
        "and write the gradient in pred's dtype. " + LIGER_OPTIONS,
)
