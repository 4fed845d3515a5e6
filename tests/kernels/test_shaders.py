"""GLSL -> SPIR-V: errors name file and line, the cache key covers everything the binary is built from, a
corrupted entry is rebuilt, and `python -m vkloss.tools` compiles, checks and lists."""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from helpers import HANG_GUARD
from vkloss import shaders
from vkloss.errors import ShaderCheckError, ShaderCompileError
from vkloss.ops.bce import BCE
from vkloss.ops.elementwise import ELEMENTWISE

GOOD = """#version 450
#extension GL_GOOGLE_include_directive : require
#include "helper.glsl"
layout(local_size_x = 1) in;
layout(set = 0, binding = 0) buffer B { float b[]; };
void main() { b[0] = VALUE * helper(); }
"""


@pytest.fixture
def shader_tree(tmp_path, monkeypatch):
    monkeypatch.setenv("VKLOSS_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "include").mkdir()
    (tmp_path / "include" / "helper.glsl").write_text("float helper() { return 2.0; }\n")
    (tmp_path / "k.comp").write_text(GOOD)
    shaders.forget_loaded()
    yield tmp_path
    shaders.forget_loaded()


def test_compile_error_names_file_line_and_message(shader_tree):
    bad = shader_tree / "bad.comp"
    bad.write_text("#version 450\nlayout(local_size_x = 1) in;\nvoid main() { undeclared_thing = 1; }\n")
    with pytest.raises(ShaderCompileError, match=r"bad\.comp:3.*undeclared_thing"):
        shaders.compile_variant(shaders.variant(bad))


def test_key_covers_source_includes_and_defines(shader_tree):
    v = shaders.variant(shader_tree / "k.comp", VALUE=1)
    key = v.key()
    assert shaders.variant(shader_tree / "k.comp", VALUE=2).key() != key
    (shader_tree / "include" / "helper.glsl").write_text("float helper() { return 3.0; }\n")
    assert v.key() != key
    (shader_tree / "include" / "helper.glsl").write_text("float helper() { return 2.0; }\n")
    assert v.key() == key


def test_corrupted_cache_entry_is_detected_and_rebuilt(shader_tree):
    v = shaders.variant(shader_tree / "k.comp", VALUE=1)
    spirv = shaders.load(v)
    entry = shader_tree / "cache" / f"{v.key()}.spv"
    blob = bytearray(entry.read_bytes())
    blob[-5] ^= 0xFF
    entry.write_bytes(bytes(blob))
    with pytest.raises(ShaderCheckError, match="corrupted"):
        shaders.check(v)
    shaders.forget_loaded()
    assert shaders.load(v) == spirv
    shaders.check(v)


def test_check_reports_a_stale_binary(shader_tree):
    v = shaders.variant(shader_tree / "k.comp", VALUE=1)
    shaders.compile_all([v])
    shaders.check(v)
    (shader_tree / "k.comp").write_text(GOOD.replace("VALUE *", "VALUE +"))
    with pytest.raises(ShaderCheckError, match="stale"):
        shaders.check(v)


def test_spirv_val_rejects_an_invalid_module():
    with pytest.raises(ShaderCheckError, match="spirv-val"):
        shaders.validate(b"\x03\x02\x23\x07" + b"\0" * 40, "garbage")


def run_tools(*args, env=None):
    return subprocess.run([sys.executable, "-m", "vkloss.tools", *args], capture_output=True, text=True, env=env,
                          timeout=HANG_GUARD)


@pytest.mark.slow  # every variant compiled into an empty cache: a minute and a half on 2 cores
def test_tools_compile_then_check_pass(tmp_path):
    env = dict(os.environ, VKLOSS_CACHE_DIR=str(tmp_path))
    compiled = run_tools("compile", env=env)
    assert compiled.returncode == 0, compiled.stderr
    assert ELEMENTWISE.variant(op="add").name in compiled.stdout
    checked = run_tools("check", env=env)
    assert checked.returncode == 0, checked.stderr
    assert "valid and current" in checked.stdout


def test_tools_check_fails_before_compile(tmp_path):
    checked = run_tools("check", env=dict(os.environ, VKLOSS_CACHE_DIR=str(tmp_path)))
    assert checked.returncode == 1 and "not compiled" in checked.stderr


def test_tools_list_prints_how_each_op_differentiates():
    listed = run_tools("list")
    assert listed.returncode == 0
    table = listed.stdout.split("\n\n")[0].splitlines()[2:]
    rows = {line.split("|")[1].strip(): line.split("|")[3].strip() for line in table}
    assert rows["mse_loss"] == rows["l1_loss"] == "primitive autodiff"
    assert rows["cross_entropy_loss"] == rows["bce_loss"] == "fused kernel"
    for op in ("neg", "add", "mul", "abs", "mean_all", "sigmoid"):
        assert rows[op] == "own rule"


def test_tools_list_shows_the_options_of_each_loss():
    listed = run_tools("list").stdout
    table = listed.split("\n\n")[0].splitlines()[2:]
    options = {line.split("|")[1].strip(): line.split("|")[4].strip() for line in table}
    # in the schema's order, PyTorch's: weight before reduction
    assert options["cross_entropy_loss"] == ("weight, reduction, ignore_index, label_smoothing, inplace_grad, "
                                             "lse_square_scale, softcap, return_z_loss")
    assert options["bce_with_logits_loss"] == "weight, reduction, pos_weight"
    assert options["bce_loss"] == "weight, reduction"
    assert options["mse_loss"] == options["l1_loss"] == "reduction"
    assert options["add"] == "-"
    assert "float label_smoothing=0.0" in listed  # the signatures, from the schemas


def test_binding_count_is_read_from_spirv():
    assert shaders.binding_count(shaders.load(ELEMENTWISE.variant(op="add").shader)) == 3
    assert shaders.binding_count(shaders.load(BCE.variant(write_grad=True).shader)) == 5


def test_dispatch_with_the_wrong_number_of_buffers_is_refused(g):
    engine = g.engine  # the guard below any op
    a = engine.alloc(4)
    with pytest.raises(ValueError, match=r"declares 3 buffer bindings but was given 2"):
        engine.dispatch(ELEMENTWISE.variant(op="add").shader, [a], [a], [4], (1, 1, 1))


@pytest.mark.slow
def test_bench_quick_prints_ratios_and_writes_json(tmp_path):
    import json

    out = tmp_path / "bench.json"
    done = run_tools("bench", "--quick", "--repeats", "1", "--json", str(out))
    assert done.returncode == 0, done.stderr
    assert "roofline" in done.stdout and "speed-up" in done.stdout
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert {r["loss"] for r in rows} == {"cross_entropy_loss", "bce_loss"}
    for r in rows:
        assert r["roofline"] > 0 and r["speedup_over_unfused"] > 0 and r["rel_error_fused"] < 1e-4
        assert r["wall_ms"] > 0 and r["copy_GBs"] > 0 and r["timestamps"] and r["kernel_ms"] > 0
    assert {r["op"] for r in report["primitives"]} >= {"neg", "add", "mean_all", "mse_loss + backward"}
    for r in report["primitives"]:
        assert r["roofline"] > 0 and r["kernel_ms"] > 0 and r["rel_error"] < 1e-4
    assert "in-place" in done.stdout and "peak device memory" in done.stdout
    for r in report["target_forms"]:
        assert r["index_s"] > 0 and r["index_in_place_s"] > 0 and r["index_roofline"] > 0
    for m in report["memory"]:  # the in-place gradient saves at least the logits' buffer
        assert m["copying_bytes"] - m["in_place_bytes"] >= m["logits_bytes"]
    engine = report["engine"]
    assert engine["device_contexts"] == 1 and "item_async()" in done.stdout
    assert engine["step_blocking_replays"] > 0 and engine["step_deferred_replays"] > 0
    assert engine["churn_buffers_after_step_2"] == 0 and engine["churn_algorithms_after_step_2"] == 0
    linear = report["linear_cross_entropy"]
    assert linear["fused_s"] > 0 and linear["fused_loss"] == pytest.approx(linear["unfused_loss"], rel=1e-4)


def test_threads_compiling_one_variant_into_an_empty_cache(shader_tree, monkeypatch):
    import threading

    v = shaders.variant(shader_tree / "k.comp", VALUE=3)
    spirv = shaders.compile_variant(v)
    together = threading.Barrier(8)

    def compile_at_once(variant):  # every thread reaches the cache write at the same moment
        together.wait()
        return spirv

    monkeypatch.setattr(shaders, "compile_variant", compile_at_once)
    errors = []

    def load():
        try:
            assert shaders.load(v) == spirv
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=load) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    shaders.check(v)


def compile_into(cache, *ops):
    """The elementwise variants of `ops`, compiled into the cache folder `cache`: only what a test reads, so no test
    waits for all the variants to compile (minutes on a busy machine)."""
    script = ("from vkloss.ops.elementwise import ELEMENTWISE; from vkloss import shaders\n"
              f"for op in {list(ops)!r}: shaders.load(ELEMENTWISE.variant(op=op).shader)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=dict(os.environ, VKLOSS_CACHE_DIR=str(cache)))
    assert done.returncode == 0, done.stderr


def test_garbage_in_the_cache_index_is_rebuilt_not_a_traceback(tmp_path):
    env = dict(os.environ, VKLOSS_CACHE_DIR=str(tmp_path))
    compile_into(tmp_path, "add")
    for index in (tmp_path / "latest").iterdir():
        index.write_bytes(os.urandom(40))
    checked = run_tools("check", env=env)
    assert "Traceback" not in checked.stderr, checked.stderr
    script = "import vkloss; g = vkloss.Graph(); print(g.add(g.tensor([2.0, 3.0]), g.tensor([4.0, 5.0])).numpy())"
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=HANG_GUARD)
    assert ran.returncode == 0 and ran.stdout.strip() == "[6. 8.]", ran.stderr


# ---- cache entries bound to their keys ---------------------------------------------------------------------
def test_swapped_cache_entries_are_refused_and_rebuilt(tmp_path):
    env = dict(os.environ, VKLOSS_CACHE_DIR=str(tmp_path))
    add = ELEMENTWISE.variant(op="add").shader
    mul = ELEMENTWISE.variant(op="mul").shader
    compile_into(tmp_path, "add", "mul")
    a, m = tmp_path / f"{add.key()}.spv", tmp_path / f"{mul.key()}.spv"
    a_bytes, m_bytes = a.read_bytes(), m.read_bytes()
    a.write_bytes(m_bytes)
    m.write_bytes(a_bytes)
    checked = run_tools("check", env=env)
    assert checked.returncode == 1 and "not its own" in checked.stderr
    script = "import vkloss; g = vkloss.Graph(); print(g.add(g.tensor([2.0, 3.0]), g.tensor([4.0, 5.0])).numpy())"
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=HANG_GUARD)
    assert ran.returncode == 0 and ran.stdout.strip() == "[6. 8.]", ran.stderr


def test_an_unwritable_cache_falls_back_to_a_temporary_one_with_one_warning(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o500)
    if os.access(cache, os.W_OK):  # root writes anywhere: make it a file instead
        cache.chmod(0o700)
        shutil.rmtree(cache)
        cache.write_text("not a folder")
    script = textwrap.dedent("""
        import warnings, vkloss
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            g = vkloss.Graph()
            print(g.add(g.tensor([2.0]), g.tensor([3.0])).item(), g.mul(g.tensor([2.0]), g.tensor([3.0])).item())
        print(sum("cannot be written" in str(w.message) for w in caught))
    """)
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=HANG_GUARD,
                         env=dict(os.environ, VKLOSS_CACHE_DIR=str(cache)))
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["5.0", "6.0", "1"]
