"""sai_jax: SGD-SaI as optax gradient transformations.

``sgd_sai(learning_rate)`` is the optimizer; ``scale_by_sai`` is its building block (the direction
``S * m``); ``sgd_sai_groups`` expresses parameter groups with different hyperparameters that share
one g-SNR normaliser. All are pure ``init``/``update`` pairs that jit, shard and checkpoint like any
optax optimizer. See ``docs/jax.md``.
"""

from ._alias import GROUP_KEYS
from ._alias import sgd_sai
from ._alias import sgd_sai_groups
from ._transform import ScaleBySaIState
from ._transform import scale_by_sai

__all__ = [
    "GROUP_KEYS",
    "ScaleBySaIState",
    "scale_by_sai",
    "sgd_sai",
    "sgd_sai_groups",
]
