"""vkloss's own Kompute: kp 0.9.0 patched by tools/kp_patch.py and built with vkloss (tools/kp_build.py) as the
extension vkloss._kp. A `kp` installed elsewhere in the environment is never imported.

Importing vkloss does not need it (the schemas, `tools generate` and `tools list` run without a build); the first
device context does, and `require()` says then, in one ImportError, how to build it."""
try:
    from .. import _kp as kp
    _missing = None
except ImportError as e:
    kp = None
    _missing = (f"vkloss's Kompute extension (vkloss._kp) is not built or cannot load ({e}): install vkloss with pip "
                "(pip install ., or pip install -e . in a checkout), or run tools/bootstrap.sh")


def require() -> None:
    """Raise ImportError, saying how to build it, where vkloss._kp is not there."""
    if _missing is not None:
        raise ImportError(_missing)


__all__ = ["kp", "require"]
