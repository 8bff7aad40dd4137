"""Kernels for OPT: fused cross-modal attention and masked-token losses.

Public entry points (one semantics, several implementations):

* :func:`attention` — multi-head attention with per-sample key lengths,
  optional segment ids + allowed-pairs table, causal flag, cross-attention.
* :func:`masked_linear_cross_entropy` — output projection + cross-entropy
  evaluated only at selected positions.

On CPU both run PyTorch (attention: SDPA with an equivalent mask; loss:
chunked linear + cross-entropy); Triton kernels take over on CUDA tensors.
Both take ``backend=`` to force an implementation (e.g. ``"triton"`` on CPU
tensors under ``TRITON_INTERPRET=1``). See KERNELS.md for the dispatch rules,
FLOP/byte counts and measured figures.
"""

from .attention import attention
from .masked_loss import masked_linear_cross_entropy

__all__ = ["attention", "masked_linear_cross_entropy"]
