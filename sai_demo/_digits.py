"""The Keras half of the demo: an MLP on scikit-learn's bundled digits, ``model.compile`` + ``fit``.

Run in its own process (Keras fixes its backend per process; the parent sets ``KERAS_BACKEND``):

    KERAS_BACKEND=jax python -m sai_demo._digits --epochs 20 --out digits.json

Trains the same model (same seed, same initial weights, same shuffled batches) once with
``sai_keras.SGDSaI()`` and once with ``keras.optimizers.AdamW()``, both with their documented
defaults, and writes per-epoch losses, final accuracy, measured optimizer-state bytes and step
times as JSON. Progress goes to stdout as ``@@sai-demo progress`` lines, which the parent turns
into its progress bar.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

PROGRESS = "@@sai-demo progress"
BATCH_SIZE = 32


def _data(seed: int) -> tuple[Any, Any, Any, Any]:
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")  # pixel intensities 0..16 -> 0..1
    y = digits.target.astype("int32")
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)
    return np.asarray(x_train), np.asarray(x_val), np.asarray(y_train), np.asarray(y_val)


def _itemsize(dtype: Any) -> int:
    import keras
    import numpy as np

    name = keras.backend.standardize_dtype(dtype)
    return 2 if name == "bfloat16" else np.dtype(name).itemsize


def _state_bytes(optimizer: Any) -> int:
    """Bytes of every variable the optimizer holds (its iteration counter and lr included)."""
    return sum(math.prod(v.shape) * _itemsize(v.dtype) for v in optimizer.variables)


def _model(make_optimizer: Any, seed: int) -> Any:
    import keras

    keras.utils.set_random_seed(seed)  # the same initial weights for every optimizer
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(128, activation="relu", name="hidden1"),
            keras.layers.Dense(64, activation="relu", name="hidden2"),
            keras.layers.Dense(10, name="logits"),
        ],
        name="digits_mlp",
    )
    model.compile(
        optimizer=make_optimizer(),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def _train(make_optimizers: dict[str, Any], data: tuple[Any, ...], epochs: int, seed: int) -> list[dict[str, Any]]:
    """Trains one model per optimizer, epoch by epoch in turn, on the same shuffled batches.

    Alternating epochs keeps the step times comparable on a machine whose load changes.
    """
    import keras
    import numpy as np

    x_train, x_val, y_train, y_val = data
    models = {name: _model(make, seed) for name, make in make_optimizers.items()}
    step_ms: dict[str, list[float]] = {name: [] for name in models}
    history = {name: {"train_loss": [], "val_loss": [], "val_accuracy": []} for name in models}

    class Timer(keras.callbacks.Callback):
        def __init__(self, times: list[float]) -> None:
            super().__init__()
            self.times = times

        def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
            self.began = time.perf_counter()

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            # Reading the loss waits for the step to finish (JAX dispatches asynchronously).
            float(logs["loss"])
            self.times.append(1e3 * (time.perf_counter() - self.began))

    order = np.random.default_rng(seed)
    for epoch in range(epochs):
        permutation = order.permutation(len(x_train))  # one shuffle per epoch, for every optimizer
        for name, model in models.items():
            logs = model.fit(
                x_train[permutation],
                y_train[permutation],
                batch_size=BATCH_SIZE,
                epochs=1,
                shuffle=False,
                validation_data=(x_val, y_val),
                callbacks=[Timer(step_ms[name])],
                verbose=0,
            ).history
            history[name]["train_loss"].append(float(logs["loss"][-1]))
            history[name]["val_loss"].append(float(logs["val_loss"][-1]))
            history[name]["val_accuracy"].append(float(logs["val_accuracy"][-1]))
            print(f"{PROGRESS} {name} {epoch + 1}", flush=True)
    runs = []
    for name, model in models.items():
        runs.append(
            {
                "name": name,
                "epochs": list(range(1, epochs + 1)),
                **history[name],
                "state_bytes": _state_bytes(model.optimizer),
                "param_bytes": sum(math.prod(v.shape) * _itemsize(v.dtype) for v in model.trainable_variables),
                # Medians: the first step of the first epoch compiles the train step.
                "median_step_ms": statistics.median(step_ms[name]),
                "steps": len(step_ms[name]),
            }
        )
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sai_demo._digits", description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    import keras

    import sai_keras

    data = _data(args.seed)
    # Documented defaults of both: SGDSaI lr 1e-3, wd 1e-2; AdamW lr 1e-3, wd 4e-3 (Keras's).
    runs = _train({"SGDSaI": sai_keras.SGDSaI, "AdamW": keras.optimizers.AdamW}, data, args.epochs, args.seed)
    document = {"backend": keras.backend.backend(), "keras": keras.__version__, "batch_size": BATCH_SIZE, "runs": runs}
    with open(args.out, "w") as handle:
        json.dump(document, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
