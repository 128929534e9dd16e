"""sai_paper: ``make paper-check``. The paper's claims about SGD-SaI, measured at CPU scale.

``python -m sai_paper`` trains three small models that need no download (:mod:`sai_paper._tasks`)
with SGD-SaI (presets ``sgd-sai`` and ``paper``), AdamW and SGD with momentum over a learning-rate
grid and three seeds (:mod:`sai_paper._protocol`), measures each model's g-SNR per tensor and each
optimizer's state, and writes ``docs/paper-check.md`` and its charts (:mod:`sai_paper._page`).
Torch only. ``--help`` for the flags.
"""

from ._cli import main

__all__ = [
    "main",
]
