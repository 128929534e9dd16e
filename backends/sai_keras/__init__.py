"""sai_keras: SGD-SaI as a Keras 3 optimizer, for the TensorFlow, JAX and torch backends.

``sai_keras.SGDSaI`` is a ``keras.optimizers.Optimizer`` registered with Keras serialization, so
``model.compile(optimizer=SGDSaI(...))``, ``model.fit`` and ``model.save`` / ``load_model`` work as
for any built-in optimizer. The math is :mod:`sai_core`'s; ``gsnr_report`` and
``scale_report`` show the g-SNR and scale of every variable (what ``sai-gsnr`` prints). See
``docs/keras.md``.
"""

from ._optimizer import SGDSaI
from ._report import gsnr_report
from ._report import scale_report

__all__ = [
    "SGDSaI",
    "gsnr_report",
    "scale_report",
]
