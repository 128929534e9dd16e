"""One variable's update of :class:`sai_keras.SGDSaI` in a TensorFlow graph without XLA.

The generic :meth:`SGDSaI._update_variable` gates an uninitialized variable with selects: a scalar
one on the learning rate and one over the whole gradient, ``where(active, g, 0)``, which keeps a
non-finite first gradient out of the buffer. Under XLA that select is fused into the buffer
update's loop and costs nothing; in a TensorFlow graph without XLA (``tf.function`` with
``jit_compile=False``, Keras's ``model.fit`` on CPU unless asked otherwise) it is one more kernel
that reads and writes the whole gradient, about a seventh of the step's memory traffic.

There a ``tf.cond`` on ``active`` is free: the graph executor runs only the branch taken, without
copying anything. So in that one setting the update runs inside ``tf.cond(active, update, no-op)``
with ``active`` known true inside, and no select at all. The values are the generic path's bit for
bit (``where(true, x, 0)`` is ``x``). Eager TensorFlow, XLA and ``tf.distribute`` strategies
other than the default keep the generic path (a cond under XLA copies the gradient; under a
strategy the per-replica update context is the generic path's).
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf
from tensorflow.python.framework import ops as tf_ops  # the default graph, for the XLA test
from tensorflow.python.ops import control_flow_util  # GraphOrParentsInXlaContext


def _graph_without_xla() -> bool:
    """True while building a ``tf.function`` graph that XLA will not compile."""
    if tf.executing_eagerly() or tf.distribute.has_strategy():
        return False
    # A tf.function with jit_compile=True builds its graph in an XLA context (checked in
    # tests/keras_backend_checks.py through the compiled modes' results, which must not change).
    return not control_flow_util.GraphOrParentsInXlaContext(tf_ops.get_default_graph())


def update_variable(optimizer: Any, grad: Any, variable: Any, learning_rate: Any, gate: tuple[Any, Any]) -> None:
    """:meth:`SGDSaI._update_variable`, branching on ``active`` where a branch costs nothing."""
    if not _graph_without_xla():
        optimizer._update_variable(grad, variable, learning_rate, gate)
        return
    active, first = gate

    def update() -> Any:
        optimizer._update_variable(grad, variable, learning_rate, (True, first))
        return tf.constant(True)

    tf.cond(active, update, lambda: tf.constant(False))
