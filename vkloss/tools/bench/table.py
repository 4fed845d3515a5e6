"""Cells of the bench's text tables."""
from __future__ import annotations


def shape_text(shape) -> str:
    return " x ".join(map(str, shape))


def cell(value, width: int, digits: int = 2) -> str:
    """A number right-aligned in `width`, or '-' where there is none (no timestamps, no PyTorch)."""
    return f"{value:{width}.{digits}f}" if value is not None else f"{'-':>{width}}"


def ms_or_dash(seconds, width: int) -> str:
    """Milliseconds right-aligned in `width`, or '-' where there is no time (PyTorch not installed)."""
    return f"{seconds * 1e3:{width}.1f}" if seconds is not None else f"{'-':>{width}}"
