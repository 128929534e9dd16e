"""sai_torch: SGD-SaI as a ``torch.optim.Optimizer``.

``SGDSaI`` is the optimizer; ``sgd_sai`` is its functional form (the update of tensors whose scale
is known), with a per-tensor, a multi-tensor and a fused implementation behind one dispatcher, as in
torch.optim. ``gsnr_report`` and ``scale_report`` show the g-SNR and scale of every tensor (what
``sai-gsnr`` prints). See ``docs/torch.md``.
"""

from ._functional import sgd_sai
from ._optimizer import SGDSaI
from ._report import gsnr_report
from ._report import scale_report

__all__ = [
    "SGDSaI",
    "gsnr_report",
    "scale_report",
    "sgd_sai",
]
