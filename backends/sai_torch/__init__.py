"""sai_torch: SGD-SaI as a ``torch.optim.Optimizer``.

``SGDSaI`` is the optimizer; ``sgd_sai`` is its functional form (the update of tensors whose scale
is known), with a per-tensor, a multi-tensor and a fused implementation behind one dispatcher, as in
torch.optim. See ``docs/torch.md``.
"""

from ._functional import sgd_sai
from ._optimizer import SGDSaI

__all__ = [
    "SGDSaI",
    "sgd_sai",
]
