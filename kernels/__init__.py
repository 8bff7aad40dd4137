"""Kernels for OPT: fused cross-modal attention and masked-token losses.

Public entry points (one semantics, several implementations):

* :func:`attention` — multi-head attention with per-sample key lengths,
  optional segment ids + allowed-pairs table, causal flag, cross-attention.
* :func:`masked_linear_cross_entropy` — output projection + cross-entropy
  evaluated only at selected positions.

On CPU both run plain PyTorch; Triton implementations take over on CUDA.
"""

from .attention import attention
from .masked_loss import masked_linear_cross_entropy

__all__ = ["attention", "masked_linear_cross_entropy"]
