"""sai_jax: SGD-SaI as optax gradient transformations.

``sgd_sai()`` is the optimizer (defaults: learning rate 1e-3, momentum 0.9, weight decay 1e-2,
preset ``"sgd-sai"``, the authors' unnormalised algorithm; under ``"paper"`` the same run needs
the learning rate times ``M`` and the weight decay divided by ``M``); ``scale_by_sai`` is its
building block (the direction ``S * m``); ``sgd_sai_groups`` expresses parameter groups with
different hyperparameters that share one g-SNR normaliser. A leaf initializes at its first
informative (finite, nonzero) gradient and is untouched until then. All are pure
``init``/``update`` pairs that jit, shard and checkpoint like any optax optimizer.
``gsnr_report`` and ``scale_report`` show the g-SNR and scale of every leaf (what ``sai-gsnr``
prints). See ``docs/jax.md``.
"""

from ._alias import GROUP_KEYS
from ._alias import sgd_sai
from ._alias import sgd_sai_groups
from ._report import gsnr_report
from ._report import scale_report
from ._transform import ScaleBySaIState
from ._transform import scale_by_sai

__all__ = [
    "GROUP_KEYS",
    "ScaleBySaIState",
    "gsnr_report",
    "scale_by_sai",
    "scale_report",
    "sgd_sai",
    "sgd_sai_groups",
]
