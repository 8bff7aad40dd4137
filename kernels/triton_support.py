"""Whether Triton can run here, and whether it runs as the CPU interpreter.

Triton decides between compiling for a GPU and interpreting with NumPy when
it is first imported (``TRITON_INTERPRET=1``), so this module only reads that
decision: it never sets the variable itself.
"""

from __future__ import annotations

import functools
import os


@functools.lru_cache(maxsize=None)
def triton_importable() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401  (its backends load here; a broken install fails now)
    except Exception:  # ImportError, or a broken install that fails while loading its backends
        return False
    return True


def interpreter_active() -> bool:
    """True when Triton kernels run on CPU tensors through the interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_usable_for(device_type: str) -> bool:
    """Can a Triton kernel take tensors living on ``device_type``?"""
    if not triton_importable():
        return False
    if device_type == "cuda":
        return True
    return device_type == "cpu" and interpreter_active()


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()
