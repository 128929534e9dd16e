"""sai_keras: SGD-SaI as a Keras 3 optimizer, for the TensorFlow, JAX and torch backends.

``sai_keras.SGDSaI`` is a ``keras.optimizers.Optimizer`` registered with Keras serialization, so
``model.compile(optimizer=SGDSaI(...))``, ``model.fit`` and ``model.save`` / ``load_model`` work as
for any built-in optimizer. The math is :mod:`sai_core`'s; see ``docs/keras.md``.
"""

from ._optimizer import SGDSaI

__all__ = [
    "SGDSaI",
]
