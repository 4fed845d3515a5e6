"""PyTorch's loss options on the fused kernels: reduction, class weights, ignore_index, label smoothing and class-index
targets for cross-entropy; reduction, weight and pos_weight for binary cross-entropy (with and without logits);
reduction for the composed MSE and L1. Each option and combination against PyTorch in float64 (the float64 numpy
twin in vkloss.reference where PyTorch is not installed; a test checks the twin against PyTorch)."""
import itertools

import numpy as np
import pytest

import vkloss
from vkloss import reference
from helpers import f32

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch not installed")
TOLERANCE = 2e-5  # relative to the reference's largest magnitude (float32 kernels, float64 reference)


# ---- references ------------------------------------------------------------------------------------------------
def _torch_options(options):
    converted = {}
    for name, value in options.items():
        if value is None or name == "inplace_grad":
            continue
        converted[name] = torch.tensor(f32(value)) if isinstance(value, np.ndarray) else value
    return converted


def expected(loss, x, target, **options):
    """(value, gradient of the value's sum with respect to x), from PyTorch in float64, else from the twin."""
    if torch is None:
        twin = {"cross_entropy_loss": reference.cross_entropy, "bce_loss": reference.binary_cross_entropy,
                "bce_with_logits_loss": reference.binary_cross_entropy_with_logits}[loss]
        options = {k: (f32(v) if isinstance(v, np.ndarray) else v) for k, v in options.items() if k != "inplace_grad"}
        return twin(f32(x), target if target.dtype.kind in "iu" else f32(target), **options)
    fn = {"cross_entropy_loss": F.cross_entropy, "bce_loss": F.binary_cross_entropy,
          "bce_with_logits_loss": F.binary_cross_entropy_with_logits}[loss]
    xt = torch.tensor(f32(x), requires_grad=True)
    tt = torch.tensor(target) if target.dtype.kind in "iu" else torch.tensor(f32(target))
    value = fn(xt, tt, **_torch_options(options))
    value.sum().backward()
    return value.detach().numpy(), xt.grad.numpy()


def assert_close(got, want, what):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape or got.size == want.size == 1, (what, got.shape, want.shape)
    scale = max(np.abs(want).max(), 1e-30)
    error = np.abs(got.reshape(want.shape) - want).max() / scale
    assert error < TOLERANCE, f"{what}: relative error {error:.2e}"


def device_loss(g, loss, x, target, **options):
    """The device's value and the gradient of its sum with respect to x."""
    pred = g.tensor(x, requires_grad=True)
    value = getattr(g, loss)(pred, target, **options)
    result = value.numpy()
    g.backward(g.sum_all(value) if value.shape != (1,) else value)
    return result, pred.grad.numpy()


# ---- cross-entropy ---------------------------------------------------------------------------------------------
# one size per kernel path: a row per invocation, a workgroup per row (vec4 and scalar), chunked rows
CE_SIZES = [(9, 7), (33, 1000), (17, 1003), (3, 300_000)]
CE_TARGETS = ["probabilities", "index numpy", "index tensor"]
CE_OPTION_SETS = [
    {},
    {"weight": "numpy"},
    {"weight": "tensor"},
    {"label_smoothing": 0.1},
    {"ignore_index": -100},
    {"ignore_index": 2, "label_smoothing": 0.25, "weight": "tensor"},
]


def ce_case(g, rng, shape, target_kind, options):
    rows, classes = shape
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    options = dict(options)
    if target_kind == "probabilities":
        options.pop("ignore_index", None)
        host_target = rng.random(shape).astype(np.float32)
        host_target /= host_target.sum(axis=1, keepdims=True)
        target = g.tensor(host_target)
    else:
        host_target = rng.integers(0, classes, rows)
        if "ignore_index" in options:
            host_target[::3] = options["ignore_index"]
        target = host_target if target_kind == "index numpy" else g.tensor(host_target, dtype=np.int32)
    if "weight" in options:
        weight = rng.uniform(0.2, 2.0, classes).astype(np.float32)
        options["weight"] = weight if options["weight"] == "numpy" else g.tensor(weight)
        reference_options = {**options, "weight": weight}
    else:
        reference_options = options
    return x, target, host_target, options, reference_options


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("options", CE_OPTION_SETS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()) or "plain")
@pytest.mark.parametrize("target_kind", CE_TARGETS)
@pytest.mark.parametrize("shape", CE_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_cross_entropy_options_match_pytorch(g, rng, shape, target_kind, options, reduction):
    x, target, host_target, options, reference_options = ce_case(g, rng, shape, target_kind, options)
    got, got_grad = device_loss(g, "cross_entropy_loss", x, target, reduction=reduction, **options)
    want, want_grad = expected("cross_entropy_loss", x, host_target, reduction=reduction, **reference_options)
    assert got.shape == ((shape[0],) if reduction == "none" else (1,))
    assert_close(got, want, "loss")
    assert_close(got_grad, want_grad, "gradient")


@pytest.mark.parametrize("shape", CE_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_cross_entropy_in_place_gives_the_same_gradient_bit_for_bit(g, rng, shape):
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    labels = rng.integers(0, shape[1], shape[0])
    grads = []
    for inplace in (False, True):
        pred = g.tensor(x, requires_grad=True)
        logits = g.mul_scalar(pred, g.tensor(1.0))  # an op's output: the last layer
        loss = g.cross_entropy_loss(logits, labels, inplace_grad=inplace, label_smoothing=0.1)
        g.backward(loss)
        grads.append((loss.numpy(), pred.grad.numpy()))
    assert np.array_equal(grads[0][0], grads[1][0]) and np.array_equal(grads[0][1], grads[1][1])


def test_cross_entropy_with_every_row_ignored_is_nan_with_zero_gradient_as_in_pytorch(g, rng):
    x = rng.standard_normal((4, 6)).astype(np.float32)
    labels = np.full(4, -100)
    got, grad = device_loss(g, "cross_entropy_loss", x, labels, ignore_index=-100)
    assert np.isnan(got[0]) and np.array_equal(grad, np.zeros_like(x))
    got, grad = device_loss(g, "cross_entropy_loss", x, labels, ignore_index=-100, reduction="sum")
    assert got[0] == 0.0 and np.array_equal(grad, np.zeros_like(x))
    if torch is not None:
        assert np.isnan(F.cross_entropy(torch.tensor(x), torch.tensor(labels), ignore_index=-100).item())


def test_ignored_rows_contribute_nothing_even_with_non_finite_logits(g, rng):
    x = rng.standard_normal((3, 5)).astype(np.float32)
    x[1] = np.nan
    labels = np.array([1, 7, 4])  # row 1 is ignored (7)
    got, grad = device_loss(g, "cross_entropy_loss", x, labels, ignore_index=7, reduction="none")
    assert got[1] == 0.0 and np.array_equal(grad[1], np.zeros(5)) and np.isfinite(got).all()


def test_index_targets_with_rows_beyond_the_workgroup_limit(g, rng):
    rows, classes = 70_000, 24  # more rows than one dispatch dimension holds workgroups (one invocation per row)
    x = rng.standard_normal((rows, classes)).astype(np.float32)
    labels = rng.integers(0, classes, rows)
    got, grad = device_loss(g, "cross_entropy_loss", x, labels)
    want, want_grad = reference.cross_entropy(f32(x), labels)
    assert_close(got, want, "loss")
    assert_close(grad, want_grad, "gradient")
    rows, classes = 66_000, 100  # a workgroup per row: 66,000 workgroups
    x = rng.standard_normal((rows, classes)).astype(np.float32)
    labels = rng.integers(0, classes, rows)
    got, grad = device_loss(g, "cross_entropy_loss", x, g.tensor(labels, dtype=np.int32), reduction="sum")
    want, want_grad = reference.cross_entropy(f32(x), labels, reduction="sum")
    assert_close(got, want, "loss")
    assert_close(grad, want_grad, "gradient")


def test_index_targets_at_the_longest_row_one_workgroup_handles(g, rng):
    classes = 1 << 18  # 2^18 classes / 32 invocations: 2048 vec4 loop iterations per pass, far under lavapipe's limit
    x = rng.standard_normal((2, classes)).astype(np.float32)
    labels = np.array([0, classes - 1])
    got, grad = device_loss(g, "cross_entropy_loss", x, labels, label_smoothing=0.05)
    want, want_grad = expected("cross_entropy_loss", x, labels, label_smoothing=0.05)
    assert_close(got, want, "loss")
    assert_close(grad, want_grad, "gradient")


@needs_torch
def test_the_float64_twin_matches_pytorch_on_every_option(rng):
    x = rng.standard_normal((6, 5))
    labels = np.array([0, 4, -1, 2, -1, 3])
    weight = rng.uniform(0.5, 2, 5)
    for reduction, smoothing in itertools.product(["mean", "sum", "none"], [0.0, 0.3]):
        options = dict(reduction=reduction, weight=weight, ignore_index=-1, label_smoothing=smoothing)
        want = expected("cross_entropy_loss", x, labels, **options)
        got = reference.cross_entropy(f32(x), labels, **{**options, "weight": f32(weight)})
        assert_close(got[0], want[0], "twin loss")
        assert_close(got[1], want[1], "twin gradient")
    probs = rng.random((6, 5))
    for options in ({"weight": weight}, {"pos_weight": weight}):
        want = expected("bce_with_logits_loss", x * 20, probs, **options)
        got = reference.binary_cross_entropy_with_logits(f32(x * 20), f32(probs), **{k: f32(v) for k, v in options.items()})
        assert_close(got[0], want[0], "twin loss")
        assert_close(got[1], want[1], "twin gradient")


# ---- cross-entropy: bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["numpy", "tensor"])
def test_class_indices_out_of_range_raise_at_the_next_read(g, kind):
    labels = np.array([0, 5, -3, 2])
    target = labels if kind == "numpy" else g.tensor(labels, dtype=np.int32)
    loss = g.cross_entropy_loss(g.tensor(np.zeros((4, 5))), target)
    with pytest.raises(ValueError, match=r"2 class indices of target \(shape \(4,\)\) are outside \[0, 5\)"):
        loss.item()
    ok = g.cross_entropy_loss(g.tensor(np.zeros((4, 5))), np.array([0, 1, -1, 2]), ignore_index=-1)
    assert ok.item() == pytest.approx(np.log(5), rel=1e-6)  # the error was reported once, and is not sticky


# Every row kernel flags its own rows' bad indices: one invocation per row (5 classes), a workgroup per row (999:
# scalar, 1,000: four classes at a time, also in float16, and held in registers as GPUs run it), and the chunked
# kernels (300,001 classes); each reduction, and with ignore_index and class weights (the normalizer's own pass).
@pytest.mark.parametrize("classes, dtype, registers", [(5, np.float32, False), (999, np.float32, False),
                                                       (1000, np.float32, False), (1000, np.float16, False),
                                                       (1000, np.float32, True), (300_001, np.float32, False)])
@pytest.mark.parametrize("options", [{}, {"reduction": "sum"}, {"reduction": "none"},
                                     {"ignore_index": -1, "weight": "ones"}])
def test_class_indices_out_of_range_in_every_row_kernel(rng, classes, dtype, registers, options):
    with vkloss.Graph() as g:  # its own: the session's graph is not patched
        if registers:  # MODE_ROW_ONCE (256 invocations of 2 vec4s: 2,048 classes), which CPU devices leave to MODE_ROW
            g.engine.launch.row_once = lambda vectors: (256, 2) if vectors <= 512 else None
        check_bad_indices(g, rng, classes, dtype, options)


def check_bad_indices(g, rng, classes, dtype, options):
    options = {k: (np.ones(classes) if v == "ones" else v) for k, v in options.items()}
    labels = np.array([0, classes, -3, 2, -1, classes - 1])
    x = rng.standard_normal((6, classes)).astype(np.float32)
    p = g.tensor(x, dtype=dtype, requires_grad=True)
    loss = g.cross_entropy_loss(p, labels, **options)
    g.backward(g.sum_all(loss))
    bad = 3 if "ignore_index" not in options else 2  # -1 is ignored where it is ignore_index
    with pytest.raises(ValueError, match=rf"{bad} class indices of target \(shape \(6,\)\) are outside \[0, {classes}\)"):
        loss.numpy()
    good = np.array([0, 1, classes - 1, 2, 0, classes - 1])  # the graph still works, and reports nothing stale
    ok = g.cross_entropy_loss(g.tensor(x, dtype=dtype), good, **options)
    want = reference.cross_entropy(g.tensor(x, dtype=dtype).numpy().astype(np.float64), good,
                                   **{k: v for k, v in options.items() if k != "ignore_index"})[0]
    np.testing.assert_allclose(ok.numpy(), want, rtol=1e-5)


@pytest.mark.parametrize("target, error, message", [
    (np.zeros(4, np.float32), TypeError, "must be integer class indices"),
    (np.zeros((4, 5), np.int64), TypeError, "float32 probabilities, not int32"),
    (np.zeros(3, np.int64), ValueError, "target of the same shape"),
    (np.zeros((4, 6), np.float32), ValueError, "target of the same shape"),
])
def test_a_target_of_the_wrong_kind_or_shape(g, target, error, message):
    operand = g.tensor(target) if target.dtype == np.float32 else target
    with pytest.raises(error, match=message):
        g.cross_entropy_loss(g.tensor(np.zeros((4, 5))), operand)


@pytest.mark.parametrize("options, error, message", [
    ({"reduction": "avg"}, ValueError, "reduction must be one of 'mean', 'sum', 'none', got 'avg'"),
    ({"weight": np.ones(4)}, ValueError, r"weight must have shape \(5,\), one per class; got \(4,\)"),
    ({"weight": np.ones((5, 1))}, ValueError, "weight must have shape"),
    ({"weight": np.array(["a"] * 5)}, TypeError, "weight must be a non-empty array of real numbers"),
    ({"label_smoothing": 1.5}, ValueError, "label_smoothing must be a number in"),
    ({"ignore_index": 1.0}, TypeError, "ignore_index must be an int"),
    ({"ignore_index": 2 ** 40}, ValueError, "does not fit int32"),
    ({"smoothing": 0.1}, TypeError, "unexpected keyword argument 'smoothing'"),
])
def test_bad_cross_entropy_options(g, options, error, message):
    with pytest.raises(error, match=message):
        g.cross_entropy_loss(g.tensor(np.zeros((4, 5))), np.arange(4), **options)


def test_ignore_index_with_probability_targets_is_refused_as_in_pytorch(g):
    # PyTorch: "ignore_index is not supported for floating point target" for a class (>= 0); a negative one, its
    # default -100 among them, is left unused
    with pytest.raises(ValueError, match="ignore_index applies to class-index targets"):
        g.cross_entropy_loss(g.tensor(np.zeros((4, 5))), g.tensor(np.full((4, 5), 0.2)), ignore_index=0)
    for unused in (-100, -3, None):
        loss = g.cross_entropy_loss(g.tensor(np.zeros((4, 5))), g.tensor(np.full((4, 5), 0.2)), ignore_index=unused)
        assert loss.item() == pytest.approx(np.log(5), rel=1e-6)


def test_weight_that_requires_a_gradient_is_refused(g):
    with pytest.raises(ValueError, match="weight must be a float32 tensor that requires no gradient"):
        g.cross_entropy_loss(g.tensor(np.zeros((4, 5))), np.arange(4), weight=g.tensor(np.ones(5), requires_grad=True))


# ---- integer tensors -------------------------------------------------------------------------------------------
def test_int32_tensors_hold_class_indices_exactly(g):
    labels = np.array([0, 2 ** 31 - 1, -(2 ** 31), 7], np.int64)
    t = g.tensor(labels, dtype=np.int32)
    assert t.dtype == np.int32 and t.numpy().dtype == np.int32 and np.array_equal(t.numpy(), labels)
    t.copy_(np.array([1, 2, 3, 4]))
    assert np.array_equal(t.numpy(), [1, 2, 3, 4])
    assert "dtype=int32" in repr(t)


@pytest.mark.parametrize("data, options, error, message", [
    (np.array([0.5, 1.0]), {"dtype": np.int32}, TypeError, "an int32 tensor takes integer data"),
    (np.array([2 ** 31]), {"dtype": np.int32}, ValueError, "do not fit int32"),
    (np.array([1, 2]), {"dtype": np.int32, "requires_grad": True}, ValueError, "cannot require a gradient"),
    (np.array([1, 2]), {"dtype": np.float64}, TypeError, "dtype must be float32, int32, float16 or .bfloat16."),
])
def test_bad_integer_tensors(g, data, options, error, message):
    with pytest.raises(error, match=message):
        g.tensor(data, **options)


def test_ops_refuse_integer_tensors_where_they_take_floats(g):
    labels = g.tensor(np.array([1, 2, 3]), dtype=np.int32)
    with pytest.raises(TypeError, match=r"g.add: argument 2 is an int32 tensor of shape \(3,\); this op takes float32"):
        g.add(g.tensor(np.zeros(3)), labels)
    with pytest.raises(TypeError, match="argument 1 is an int32 tensor"):
        g.cross_entropy_loss(labels, labels)


# ---- in-place gradient -----------------------------------------------------------------------------------------
def last_layer(g, rng, rows=8, classes=12):
    h = g.tensor(rng.standard_normal((rows, 4)), requires_grad=True)
    w = g.tensor(rng.standard_normal((4, classes)), requires_grad=True)
    return h, w, g.matmul(h, w)


def test_in_place_logits_cannot_be_read_or_used_afterwards(g, rng):
    h, w, logits = last_layer(g, rng)
    loss = g.cross_entropy_loss(logits, np.arange(8) % 12, inplace_grad=True)
    with pytest.raises(RuntimeError, match=r"overwritten by g.cross_entropy_loss\(..., inplace_grad=True\)"):
        logits.numpy()
    with pytest.raises(RuntimeError, match="overwritten"):
        g.relu(logits)
    g.backward(loss)  # the gradient flows on into the layer
    assert np.isfinite(w.grad.numpy()).all() and np.isfinite(h.grad.numpy()).all()


def test_in_place_gradient_trains_like_the_copying_one(g, rng):
    h_data, w_data = rng.standard_normal((8, 4)), rng.standard_normal((4, 12))
    labels = rng.integers(0, 12, 8)
    results = []
    for inplace in (False, True):
        h, w = g.tensor(h_data, requires_grad=True), g.tensor(w_data, requires_grad=True)
        loss = g.cross_entropy_loss(g.matmul(h, w), labels, inplace_grad=inplace, reduction="sum")
        g.backward(loss)
        results.append([loss.numpy(), w.grad.numpy(), h.grad.numpy()])
    for a, b in zip(*results):
        assert np.array_equal(a, b)


def test_in_place_is_refused_on_a_leaf(g, rng):
    logits = g.tensor(rng.standard_normal((4, 5)), requires_grad=True)
    with pytest.raises(ValueError, match=r"leaf tensor of shape \(4, 5\) \(a parameter or an input\)"):
        g.cross_entropy_loss(logits, np.arange(4), inplace_grad=True)
    assert logits.numpy().shape == (4, 5)  # untouched


def test_in_place_without_a_gradient_leaves_the_logits_alone(g, rng):
    x = rng.standard_normal((4, 5)).astype(np.float32)
    logits = g.mul_scalar(g.tensor(x), g.tensor(1.0))
    g.cross_entropy_loss(logits, np.arange(4), inplace_grad=True).item()
    assert np.array_equal(logits.numpy(), x)


def test_a_backward_rule_that_needs_the_overwritten_logits_says_so(g, rng):
    z = g.tensor(rng.standard_normal((4, 5)), requires_grad=True)
    probabilities = g.sigmoid(z)  # sigmoid's backward reads its output
    loss = g.cross_entropy_loss(probabilities, np.arange(4), inplace_grad=True)
    with pytest.raises(RuntimeError, match="overwritten by g.cross_entropy_loss"):
        g.backward(loss)


def test_in_place_saves_a_buffer_of_the_logits_size(rng):
    rows, classes = 64, 1000
    peaks = {}
    for inplace in (False, True):
        with vkloss.Graph() as g:
            h, w, logits = last_layer(g, rng, rows, classes)
            loss = g.cross_entropy_loss(logits, rng.integers(0, classes, rows), inplace_grad=inplace)
            g.backward(loss)
            w.grad.numpy()
            peaks[inplace] = g.stats["peak_device_bytes"]
    assert peaks[False] - peaks[True] >= rows * classes * 4


# ---- binary cross-entropy --------------------------------------------------------------------------------------
BCE_SHAPES = [(37, 5), (64, 8), (1000,)]  # scalar and vec4 paths


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weight", [None, "full", "trailing", "tensor"])
@pytest.mark.parametrize("shape", BCE_SHAPES, ids=str)
def test_bce_options_match_pytorch(g, rng, shape, weight, reduction):
    p = rng.uniform(0.01, 0.99, shape).astype(np.float32)
    y = rng.random(shape).astype(np.float32)
    weight_host = None if weight is None else rng.uniform(0, 2, shape if weight == "full" else shape[-1:])
    device_weight = g.tensor(weight_host) if weight == "tensor" else weight_host
    got, got_grad = device_loss(g, "bce_loss", p, g.tensor(y), reduction=reduction, weight=device_weight)
    want, want_grad = expected("bce_loss", p, y, reduction=reduction, weight=weight_host)
    assert_close(got, want, "loss")
    assert_close(got_grad, want_grad, "gradient")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weight, pos_weight", [(None, None), ("trailing", None), (None, "trailing"),
                                                ("full", "trailing"), ("tensor", "tensor")])
@pytest.mark.parametrize("shape", BCE_SHAPES, ids=str)
def test_bce_with_logits_options_match_pytorch(g, rng, shape, weight, pos_weight, reduction):
    x = (rng.standard_normal(shape) * 20).astype(np.float32)
    y = rng.random(shape).astype(np.float32)
    options, reference_options = {}, {}
    for name, kind in (("weight", weight), ("pos_weight", pos_weight)):
        if kind is not None:
            host = rng.uniform(0.1, 3, shape if kind == "full" else shape[-1:])
            reference_options[name] = host
            options[name] = g.tensor(host) if kind == "tensor" else host
    got, got_grad = device_loss(g, "bce_with_logits_loss", x, g.tensor(y), reduction=reduction, **options)
    want, want_grad = expected("bce_with_logits_loss", x, y, reduction=reduction, **reference_options)
    assert_close(got, want, "loss")
    assert_close(got_grad, want_grad, "gradient")


def test_bce_with_logits_is_stable_for_logits_of_any_magnitude(g):
    x = np.array([-1e30, -1e4, -100.0, -20.0, -1e-6, 0.0, 1e-6, 20.0, 100.0, 1e4, 1e30, 3e38], np.float32)
    y = np.tile([0.0, 1.0, 0.3], 4).astype(np.float32)
    got, grad = device_loss(g, "bce_with_logits_loss", x, g.tensor(y), reduction="none",
                            pos_weight=np.full(12, 2.0, np.float32))
    want, want_grad = expected("bce_with_logits_loss", x, y, reduction="none", pos_weight=np.full(12, 2.0))
    assert np.isfinite(got).all() and np.isfinite(grad).all()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-6, atol=1e-7)


def test_bce_with_logits_labels_outside_zero_one_raise(g):
    loss = g.bce_with_logits_loss(g.tensor(np.zeros(8)), g.tensor(np.array([0, 1, 2, 0, 0, 0, np.nan, 0])))
    with pytest.raises(ValueError, match=r"bce_with_logits_loss: 2 values of labels \(shape \(8,\)\) lie outside"):
        loss.item()


@pytest.mark.parametrize("name", ["bce_loss", "bce_with_logits_loss"])
def test_bce_weight_that_does_not_broadcast_from_the_trailing_dimensions(g, name):
    with pytest.raises(ValueError, match=r"weight of shape \(4, 1\) must match pred \(4, 3\) or its trailing"):
        getattr(g, name)(g.tensor(np.full((4, 3), 0.5)), g.tensor(np.zeros((4, 3))), weight=np.ones((4, 1)))
    with pytest.raises(ValueError, match="reduction must be one of"):
        getattr(g, name)(g.tensor(np.full((4, 3), 0.5)), g.tensor(np.zeros((4, 3))), reduction="batchmean")


def test_pos_weight_is_only_for_logits(g):
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        g.bce_loss(g.tensor(np.full(3, 0.5)), g.tensor(np.zeros(3)), pos_weight=np.ones(3))


# ---- composed losses -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("loss", ["mse_loss", "l1_loss"])
def test_mse_and_l1_reductions_through_the_tape(g, rng, loss, reduction):
    pred = rng.standard_normal((5, 3)).astype(np.float32)
    target = rng.standard_normal((5, 3)).astype(np.float32)
    got, grad = device_loss(g, loss, pred, g.tensor(target), reduction=reduction)
    d = f32(pred) - f32(target)
    terms, term_grad = (d * d, 2 * d) if loss == "mse_loss" else (np.abs(d), np.sign(d))
    want = {"mean": terms.mean(), "sum": terms.sum(), "none": terms}[reduction]
    assert_close(got, want, "loss")
    assert_close(grad, term_grad / (d.size if reduction == "mean" else 1), "gradient")
    if torch is not None:
        fn = F.mse_loss if loss == "mse_loss" else F.l1_loss
        assert_close(got, fn(torch.tensor(f32(pred)), torch.tensor(f32(target)), reduction=reduction).numpy(),
                     "PyTorch")


def test_composed_losses_check_the_reduction(g):
    with pytest.raises(ValueError, match="mse_loss: reduction must be one of"):
        g.mse_loss(g.tensor(np.zeros(3)), g.tensor(np.zeros(3)), reduction="avg")


def test_reduction_none_loss_can_be_weighted_by_the_caller(g, rng):
    # the per-row losses' upstream gradient is a vector: backward multiplies each row by its entry
    x = rng.standard_normal((6, 4)).astype(np.float32)
    labels = rng.integers(0, 4, 6)
    row_weights = rng.uniform(0, 2, 6).astype(np.float32)
    pred = g.tensor(x, requires_grad=True)
    rows = g.cross_entropy_loss(pred, labels, reduction="none")
    g.backward(g.sum_all(g.mul(rows, g.tensor(row_weights))))
    _, unit_grad = reference.cross_entropy(f32(x), labels, reduction="none")
    assert_close(pred.grad.numpy(), unit_grad * f32(row_weights)[:, None], "gradient")
