"""python -m vkloss.tools {compile,check,list,devices,bench}: build and check the shaders, show the op table,
list devices, measure the fused losses."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from .. import kernels, registry, shaders
from . import bench, generate
from .generate import markdown_op_table, shader_cell
from ..device import choose_device, devices
from ..errors import NoVulkanDeviceError, ShaderCheckError, ShaderCompileError


def all_variants() -> list[shaders.Variant]:
    """Every shader variant: each declared kernel's (ops, optimizers, bench baselines alike), then users' op shaders."""
    seen: dict[shaders.Variant, None] = {}
    for kernel in kernels.catalog():
        for v in kernel.variants():
            seen.setdefault(v.shader)
    for op in registry.all_ops():
        for v in op.shader_variants:
            seen.setdefault(v)
    return list(seen)


def binding_mismatches() -> list[str]:
    """Kernel variants whose compiled shader declares another number of bindings than their table lists."""
    variants = [v for kernel in kernels.catalog() for v in kernel.variants()]
    # compiles what the cache lacks, side by side
    declared = shaders.in_parallel(lambda v: shaders.binding_count(shaders.load(v.shader)), variants)
    return [f"{v.name}: the shader declares {count} bindings, its table {v.reads + v.writes}"
            for v, count in zip(variants, declared) if count != len(v.reads + v.writes)]


def cmd_compile(args) -> int:
    try:
        for v, key in shaders.compile_all(all_variants()):
            print(f"compiled {v.name:48s} {key}")
    except ShaderCompileError as e:
        print(e, file=sys.stderr)
        return 1
    print(f"cache: {shaders.cache_dir()}")
    return 0


def cmd_check(args) -> int:
    failures = 0
    variants = all_variants()

    def checked(v):
        try:
            shaders.check(v)
            return None
        except (ShaderCheckError, ShaderCompileError) as e:
            return e

    for v, error in zip(variants, shaders.in_parallel(checked, variants)):  # spirv-val processes side by side
        if error is None:
            print(f"ok      {v.name}")
        else:
            failures += 1
            print(f"FAILED  {error}", file=sys.stderr)
    for problem in binding_mismatches() if not failures else ():
        failures += 1
        print(f"FAILED  {problem}", file=sys.stderr)
    used = {v.path for v in variants}
    for path in sorted(shaders.shader_dir().glob("*.comp")):
        if path.resolve() not in used:
            print(f"note    {path.name} is used by no registered op")
    print(f"{len(variants) - failures} of {len(variants)} shader variants valid and current")
    return 1 if failures else 0


def op_table() -> list[tuple[str, str, str, str]]:
    return [(op.name, shader_cell(op), str(op.backward_kind), ", ".join(op.options) or "-")
            for op in registry.all_ops()]


def cmd_list(args) -> int:
    if args.markdown:
        print(markdown_op_table())
        return 0
    rows = [("op", "shader", "backward", "options")] + op_table()
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    print(line(rows[0]))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows[1:]:
        print(line(r))
    print("\nsignatures (vkloss/schema.py):")
    for op in registry.all_ops():
        print(f"  {op.schema.text()}")
    return 0


def cmd_devices(args) -> int:
    chosen = choose_device(None)  # VKLOSS_DEVICE checked before: run() turns its error into one line
    for d in devices():
        mark = "*" if d.index == chosen.index else " "
        print(f"{mark} {d}  maxStorageBufferRange={d.max_storage_buffer_range:,}B "
              f"maxWorkgroupCount={d.max_workgroup_count}")
    print("* = the default (VKLOSS_DEVICE, else discrete > integrated > cpu)")
    return 0


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def sections_list(text: str) -> tuple:
    """bench's --sections: names from bench.SECTIONS, comma-separated, in the order they run."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in bench.SECTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown section(s) {', '.join(unknown) or repr(text)}; choose from "
                                         f"{', '.join(bench.SECTIONS)}")
    return tuple(names)


def writable_path(text: str) -> str:
    """An output file whose folder exists and can be written: checked before minutes of work, not after."""
    folder = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"{text}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text}: cannot write a file there")
    return text


def main(argv=None) -> int:
    try:
        code = run(argv)
        sys.stdout.flush()  # here, where a closed pipe can be caught, not at exit
        return code
    except BrokenPipeError:  # `tools list | head`: the reader is gone, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def run(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vkloss.tools", description=__doc__)
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="import MODULE first, so the ops it registers are compiled, checked and listed too "
                             "(packages can instead declare an entry point in the group 'vkloss.ops')")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("compile", help="compile every shader variant into the SPIR-V cache")
    sub.add_parser("check", help="run spirv-val on every cached variant; fail on an invalid, missing or stale one")
    listing = sub.add_parser("list", help="print the op registry: op, shader, how it differentiates, options")
    listing.add_argument("--markdown", action="store_true", help="the README's table: signature, shader, backward")
    sub.add_parser("devices", help="list the Vulkan devices and which one is the default")
    gen = sub.add_parser("generate", help="write vkloss/_graph_ops.py, the ops as Graph methods, from their schemas")
    gen.add_argument("--check", action="store_true", help="only say whether the file is current (exit 1 if not)")
    b = sub.add_parser("bench", help="time CE and BCE loss + gradient: roofline ratio, fused vs unfused, PyTorch")
    b.add_argument("--json", metavar="PATH", type=writable_path, help="also write the figures as JSON")
    b.add_argument("--quick", action="store_true", help="small sizes only (a smoke test)")
    b.add_argument("--repeats", type=positive_int, default=5, help="timed runs per figure; the median is shown")
    b.add_argument("--device", default=None, help="device index (default: VKLOSS_DEVICE, else the best)")
    b.add_argument("--sections", type=sections_list, default=None, metavar="A,B",
                   help=f"run only these parts, comma-separated, of: {', '.join(bench.SECTIONS)} (default: all)")
    args = parser.parse_args(argv)
    for module in args.imports:
        try:
            importlib.import_module(module)
        except ImportError as e:
            parser.error(f"--import {module}: {e}")
    if args.command in ("devices", "bench"):  # a bad --device or VKLOSS_DEVICE: one line, exit 2, no traceback
        try:
            args.device = choose_device(getattr(args, "device", None)).index
        except (NoVulkanDeviceError, ValueError, TypeError) as e:
            parser.error(str(e))
    commands = {"compile": cmd_compile, "check": cmd_check, "list": cmd_list, "devices": cmd_devices,
                "bench": bench.main, "generate": generate.main}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
