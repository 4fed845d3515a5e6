"""python -m vkloss.tools {compile,check,list,devices,bench}: build and check the shaders, show the op table,
list devices, measure the fused losses."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from .. import optim, registry, shaders
from . import bench
from ..device import choose_device, devices
from ..errors import ShaderCheckError, ShaderCompileError


def all_variants() -> list[shaders.Variant]:
    """Every shader variant a registered op may dispatch, each once, in registry order."""
    seen: dict[shaders.Variant, None] = {}
    for op in registry.all_ops():
        for v in op.variants() if op.variants else ():
            seen.setdefault(v)
    for v in optim.VARIANTS + bench.VARIANTS:  # optimizer updates and bench baselines, checked like the ops'
        seen.setdefault(v)
    return list(seen)


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
    for v in variants:
        try:
            shaders.check(v)
            print(f"ok      {v.name}")
        except (ShaderCheckError, ShaderCompileError) as e:
            failures += 1
            print(f"FAILED  {e}", file=sys.stderr)
    used = {v.path for v in variants}
    for path in sorted(shaders.shader_dir().glob("*.comp")):
        if path.resolve() not in used:
            print(f"note    {path.name} is used by no registered op")
    print(f"{len(variants) - failures} of {len(variants)} shader variants valid and current")
    return 1 if failures else 0


def op_table() -> list[tuple[str, str, str, str]]:
    return [(op.name, op.shader or "(composed)", op.backward_kind, ", ".join(op.options or ()) or "-")
            for op in registry.all_ops()]


def cmd_list(args) -> int:
    rows = [("op", "shader", "backward", "options")] + op_table()
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    print(line(rows[0]))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows[1:]:
        print(line(r))
    described = [op for op in registry.all_ops() if op.options]
    if described:
        print("\noptions (keyword arguments):")
        for op in described:
            print(f"  {op.name}")
            width = max(map(len, op.options))
            for name, values in op.options.items():
                print(f"    {name.ljust(width)}  {values}")
    return 0


def cmd_devices(args) -> int:
    chosen = choose_device(None)
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
    sub.add_parser("list", help="print the op registry: op, shader, how it differentiates, options")
    sub.add_parser("devices", help="list the Vulkan devices and which one is the default")
    b = sub.add_parser("bench", help="time CE and BCE loss + gradient: roofline ratio, fused vs unfused, PyTorch")
    b.add_argument("--json", metavar="PATH", type=writable_path, help="also write the figures as JSON")
    b.add_argument("--quick", action="store_true", help="small sizes only (a smoke test)")
    b.add_argument("--repeats", type=positive_int, default=5, help="timed runs per figure; the median is shown")
    b.add_argument("--device", default=None, help="device index (default: VKLOSS_DEVICE, else the best)")
    args = parser.parse_args(argv)
    for module in args.imports:
        importlib.import_module(module)
    commands = {"compile": cmd_compile, "check": cmd_check, "list": cmd_list, "devices": cmd_devices,
                "bench": bench.main}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
