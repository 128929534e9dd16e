"""sai_core: the SGD-SaI math (array API) and the NumPy float64 reference optimizer.

SGD-SaI (arXiv 2412.11768) is SGD with momentum whose learning rate is multiplied, per parameter
tensor, by a constant fixed at that tensor's first informative gradient: its gradient
signal-to-noise ratio.
This package defines that math once; the backends (``sai_torch``, ``sai_jax``, ``sai_keras``) and
the conformance suite (``sai_conformance``) build on it. Importing it imports no ML framework.
"""

from ._config import DEFAULT_HYPERPARAMETERS
from ._config import DEFAULT_PRESET
from ._config import KNOB_VALUES
from ._config import PRESETS
from ._config import SaIConfig
from ._config import resolve_config
from ._config import validate_hyperparameters
from ._math import NAMESPACE_CONTRACT
from ._math import NonFiniteGradientWarning
from ._math import compute_dtype
from ._math import gsnr
from ._math import is_informative
from ._math import raw_gsnr
from ._math import scale_from_gsnr
from ._math import update_momentum
from ._math import update_param
from ._reference import ReferenceSGDSaI
from ._report import GsnrReport
from ._report import GsnrRow
from ._report import report_from_gradients
from ._report import report_from_scales

__version__ = "0.2.0"

__all__ = [
    "DEFAULT_HYPERPARAMETERS",
    "DEFAULT_PRESET",
    "GsnrReport",
    "GsnrRow",
    "KNOB_VALUES",
    "NAMESPACE_CONTRACT",
    "NonFiniteGradientWarning",
    "PRESETS",
    "ReferenceSGDSaI",
    "SaIConfig",
    "compute_dtype",
    "gsnr",
    "is_informative",
    "raw_gsnr",
    "report_from_gradients",
    "report_from_scales",
    "resolve_config",
    "scale_from_gsnr",
    "update_momentum",
    "update_param",
    "validate_hyperparameters",
]
