"""Repository-wide pytest configuration.

Keras fixes its backend per process, so nothing Keras-specific is imported in the main pytest
process (which also hosts the torch and JAX tests): the Keras adapter's doctests and its
conformance runner are exercised by the Keras tests, one subprocess per backend.
"""

collect_ignore_glob = [
    "backends/sai_keras/*",
    "conformance/sai_conformance/runners/keras_runner.py",
]
