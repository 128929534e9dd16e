"""sai_gsnr: ``sai-gsnr``, the inspector that shows what the g-SNR does to each tensor of a model.

The adapters compute the numbers (``sai_torch.gsnr_report``, ``sai_jax.gsnr_report``,
``sai_keras.gsnr_report`` from one gradient; their ``scale_report`` from an optimizer's state), as
a :class:`sai_core.GsnrReport`; this package renders it, one way for every framework:
:func:`format_report` (the table), :func:`report_json` and :func:`plot_report` (G against
sqrt(n)). ``python -m sai_gsnr`` is the command line (:mod:`sai_gsnr._cli`). Importing this package
imports no ML framework.
"""

from ._render import format_report
from ._render import plot_report
from ._render import report_json

__all__ = [
    "format_report",
    "plot_report",
    "report_json",
]
