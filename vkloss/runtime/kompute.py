"""vkloss's own Kompute: kp 0.9.0 patched by tools/kp_patch.py and built with vkloss (tools/kp_build.py) as the
extension vkloss._kp. A `kp` installed elsewhere in the environment is never imported."""
try:
    from .. import _kp as kp
except ImportError as e:
    raise ImportError(f"vkloss's Kompute extension (vkloss._kp) is not built or cannot load ({e}): install vkloss "
                      "with pip (pip install ., or pip install -e . in a checkout), or run tools/bootstrap.sh") from e

__all__ = ["kp"]
