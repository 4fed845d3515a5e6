"""The runtime: everything that talks to the device, in one-way layers (see engine.py). Only this package imports
kp."""
from .context import DeviceContext, contexts_made, parse_bytes
from .engine import Buffer, Engine, engines_on

__all__ = ["Buffer", "DeviceContext", "Engine", "contexts_made", "engines_on", "parse_bytes"]
