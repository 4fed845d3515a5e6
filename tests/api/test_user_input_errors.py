"""What a user types that vkloss must take as PyTorch or numpy would, or refuse with a clear error that names the
problem, leaving the Graph usable."""
import os
import subprocess
import sys

import numpy as np
import pytest

import vkloss
from vkloss import schema as schemas
from vkloss.runtime import parse_bytes
from helpers import HANG_GUARD


# ---- VKLOSS_MEMORY_BUDGET --------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, value", [("4000000000", 4_000_000_000), ("1e6", 1_000_000), ("512MiB", 512 << 20),
                                         ("2GB", 2_000_000_000), ("100MB", 100_000_000), ("1.5 GiB", 3 << 29),
                                         ("64kb", 64_000)])
def test_a_memory_budget_takes_the_usual_spellings(text, value):
    assert parse_bytes(text) == value


@pytest.mark.parametrize("text, says", [("-5", "at least one byte"), ("0", "at least one byte"),
                                        ("lots", "not a byte count"), ("12 parsecs", "not a byte count")])
def test_a_bad_memory_budget_names_the_variable_and_the_format(text, says):
    with pytest.raises(ValueError, match=f"VKLOSS_MEMORY_BUDGET={text!r}.*{says}"):
        parse_bytes(text)


def test_the_budget_is_read_from_the_environment():
    script = "import vkloss; print(vkloss.Graph().engine.context.budget)"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=HANG_GUARD,
                          env=dict(os.environ, VKLOSS_MEMORY_BUDGET="256MiB"))
    assert done.returncode == 0 and done.stdout.strip() == str(256 << 20), done.stderr
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=HANG_GUARD,
                          env=dict(os.environ, VKLOSS_MEMORY_BUDGET="-1"))
    assert done.returncode != 0 and "VKLOSS_MEMORY_BUDGET='-1'" in done.stderr


# ---- tensors from tensors ----------------------------------------------------------------------------------------
def test_copy_from_a_tensor_copies_on_the_device_as_pytorch(g):
    source, target = g.tensor([1.5, -2.0]), g.tensor([0.0, 0.0])
    before = g.stats["submissions"]
    target.copy_(source)
    assert g.stats["submissions"] == before  # recorded, not read back and uploaded
    np.testing.assert_array_equal(target.numpy(), [1.5, -2.0])
    target.copy_(g.tensor([0.5, 3.0], dtype="bfloat16"))  # converted to the target's dtype
    np.testing.assert_array_equal(target.numpy(), [0.5, 3.0])


def test_a_tensor_made_from_a_tensor_is_a_copy(g):
    source = g.tensor([1.0, 2.0])
    copy = g.tensor(source, requires_grad=True)
    assert copy.requires_grad and copy is not source and copy.buffer is not source.buffer
    half = g.tensor(source, dtype=np.float16)
    assert half.dtype == np.float16 and half.numpy().tolist() == [1.0, 2.0]
    source.copy_(np.array([5.0, 6.0]))
    assert copy.numpy().tolist() == [1.0, 2.0]


@pytest.mark.parametrize("make, says", [
    (lambda g: g.tensor([1.0, 2.0]).copy_(g.tensor([1.0, 2.0, 3.0])), r"shape \(3,\) into one of shape \(2,\)"),
    (lambda g: g.tensor([1.0, 2.0]).copy_(g.tensor([1, 2], dtype=np.int32)), "int32 tensor .* cannot become float32"),
    (lambda g: g.tensor(vkloss.Graph().tensor([1.0])), "belongs to another Graph"),
])
def test_bad_tensor_copies_say_what_is_wrong(g, make, says):
    with pytest.raises((ValueError, TypeError), match=says):
        make(g)
    assert g.add(g.tensor([1.0]), g.tensor([2.0])).item() == 3.0


# ---- dtype spellings -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spelling", [np.float16, "float16", "half", np.dtype(np.float16)])
def test_astype_takes_every_spelling_g_tensor_takes(g, spelling):
    assert g.astype(g.tensor([1.5]), dtype=spelling).dtype == np.float16
    assert g.tensor([1.5], dtype=spelling).dtype == np.float16


def test_bfloat16_is_spelled_the_same_everywhere(g):
    assert g.astype(g.tensor([1.5]), dtype="bfloat16").dtype == "bfloat16" == g.tensor([1.5], dtype="bf16").dtype


# ---- register_op schemas -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("schema, default", [
    ("inf_default(Tensor x, *, float a=inf) -> Tensor", float("inf")),
    ("neg_inf_default(Tensor x, *, float a=-inf) -> Tensor", float("-inf")),
    ("tuple_default(Tensor x, *, int[] size=(2, 3)) -> Tensor", (2, 3)),
    ("list_default(Tensor x, *, int[] size=[4, 5]) -> Tensor", (4, 5)),
])
def test_schema_defaults_take_what_pytorchs_schemas_take(schema, default):
    parsed = schemas.parse(schema)
    assert parsed.params[1].default == default
    assert schemas.parse(parsed.text()).params[1].default == default  # round trip


@pytest.mark.parametrize("schema, says", [
    ("bad_choice(Tensor x, *, str{a|b} mode='c') -> Tensor", "bad_choice: the default of mode must be one of 'a', "
                                                             "'b', got 'c'"),
    ("bad_type(Tensor x, *, float a='x') -> Tensor", "bad_type: the default of a must be a float, got str 'x'"),
    ("bad_literal(Tensor x, *, float a=foo) -> Tensor", r"bad_literal: the default of a, 'foo', is not a Python "
                                                        r"literal"),
    ("bad_shape(Tensor x, *, int[] size=(2, 'x')) -> Tensor", "bad_shape: the default of size must be a sequence of "
                                                              "ints"),
])
def test_a_bad_schema_default_names_the_op_and_the_parameter(schema, says):
    with pytest.raises(ValueError, match=says):
        vkloss.register_op(schema, vkloss.Composed(lambda g, x, **_: x))


# ---- gradcheck -----------------------------------------------------------------------------------------------------
def test_gradcheck_passes_class_indices_through_as_torch_does(g):
    labels = g.tensor(np.array([2, 0, 1]), dtype=np.int32)
    logits = g.tensor(np.random.default_rng(0).standard_normal((3, 4)))
    assert vkloss.gradcheck(lambda p, t: g.cross_entropy_loss(p, t), [logits, labels])
    assert labels.dtype == np.int32 and not labels.requires_grad


def test_gradcheck_without_a_float_input_says_so(g):
    with pytest.raises(ValueError, match="no input is floating point"):
        vkloss.gradcheck(lambda t: g.tensor([1.0]), [g.tensor(np.array([1]), dtype=np.int32)])


def test_a_composed_ops_bad_option_names_the_op_not_a_private_function(g):
    with pytest.raises(TypeError, match=r"Graph\.mse_loss\(\) got an unexpected keyword argument 'foo'"):
        g.mse_loss(g.tensor([1.0]), g.tensor([2.0]), foo=1)
