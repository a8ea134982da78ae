"""A parameter's layout as a step function sees it: its 2-D view and its default role."""

from __future__ import annotations

import math


def view_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """Rows and columns of a parameter's 2-D view: (d0, d1·d2·…); a vector is n × 1."""
    if len(shape) == 0:
        return 1, 1
    rows = int(shape[0])
    cols = math.prod(int(d) for d in shape[1:])
    return rows, cols


def default_role(shape: tuple[int, ...]) -> str:
    return "hidden" if len(shape) >= 2 else "vector"
