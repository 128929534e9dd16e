"""sai_demo: ``make demo``. Trains a model with SGD-SaI next to AdamW, and shows what the g-SNR did.

``python -m sai_demo`` trains a character-level GPT in torch (:mod:`sai_demo._gpt`) and an MLP in
Keras ``model.compile`` (:mod:`sai_demo._digits`) with both optimizers, prints the results and
writes them to ``demo-output/`` (:mod:`sai_demo._cli`; ``--help`` for the flags).
"""

from ._cli import main

__all__ = [
    "main",
]
