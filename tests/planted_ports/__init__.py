"""Deliberately wrong SGD-SaI ports, written for this project's tests (no third-party code).

Each framework module has one clean port (contract v2, preset ``sgd-sai``, written from
docs/spec.md independently of ``sai_core`` and the backends) and one subclass or factory per
planted mistake, each named after it. ``sai-conformance identify`` must name every mistake with
the right magnitude (tests/test_identify.py); the mistakes are the ones port authors make (issue
14): weight decay after the update or multiplied by ``S``, one ``M`` per parameter group, a
normalisation by the mean g-SNR with a biased std, a running max, ``maximize`` that descends on
step 1 and negates the caller's ``.grad`` later, a zero first gradient that initializes with
``sqrt(n)``, a non-finite first gradient that poisons the block, statistics in bfloat16, a Python
``if`` on a tensor (fails under ``model.fit`` compiled), a ``step()`` that never returns, and a
module that raises when imported (:mod:`planted_ports.broken_import`).

The Keras module imports Keras: use it only in a process whose ``KERAS_BACKEND`` is set.
"""
