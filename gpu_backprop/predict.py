"""What a trained network says about new data: probabilities, classes and the loss (mixed into the network).

Unlike the trainer's hot path, these take data as users have it: uint8 images
or float features, NumPy or CuPy, checked at the boundary (:mod:`.checks`).
"""

from __future__ import annotations

from typing import Any

from . import kernels
from .backend import Backend, to_device
from .checks import as_array, as_dtype, check_int, check_samples

__all__ = ["Predictions"]

Array = Any


class Predictions:
    """What a :class:`~gpu_backprop.network.Sequential` predicts, mixed into it.

    It uses the network's ``backend``, ``xp``, ``dtype``, ``input_dim``, ``loss``,
    :meth:`check_inputs` and :meth:`forward`.
    """

    backend: Backend
    xp: Any
    dtype: Any
    input_dim: int
    loss: Any
    check_inputs: Any
    forward: Any

    def evaluate_loss(self, X: Any, y: Any) -> float:
        """The mean loss in eval mode (no gradients)."""
        X, y = self.check_inputs(X, y)
        return float(self.loss.forward(self.forward(X), y))

    def predict_proba(self, X: Any, batch_size: int = 8192) -> Array:
        """What the network predicts for ``X``: class probabilities ``(N, C)`` for the classifiers.

        Softmax of the outputs for softmax cross-entropy, the sigmoid for binary
        cross-entropy, the outputs themselves for mean squared error. ``X`` is
        what :func:`gpu_backprop.fit` takes (uint8 images or float features, on
        any device); the result is a new array on this network's device.
        """
        return self._each_batch(X, batch_size, self.loss.predict)

    def predict_classes(self, X: Any, batch_size: int = 8192) -> Array:
        """The predicted class of each row of ``X`` as int64 ``(N,)``: the most probable one (0/1 for one output).

        Read from the outputs as ``fit`` and ``evaluate`` count them: the largest, or for one output
        1 where it exceeds the loss's ``threshold``.
        """
        return self._each_batch(X, batch_size,
                                lambda out: kernels.predicted(out, self.loss.threshold).astype(self.xp.int64))

    def _each_batch(self, X: Any, batch_size: int, f: Any) -> Array:
        """``f`` of the network's outputs for ``X``, batch by batch, joined (``X`` checked and converted first)."""
        check_int("batch_size", batch_size)
        X, scale = check_samples(as_array(X, self.backend, "X"), self.input_dim)
        X = to_device(X, self.backend)
        parts = []
        for i in range(0, X.shape[0], batch_size):
            xb = as_dtype(X[i:i + batch_size], self.xp, self.dtype)
            if scale != 1.0:  # uint8 images: as_dtype made a new float array, scaled where it is
                xb *= scale
            parts.append(f(self.forward(xb)))
        return parts[0] if len(parts) == 1 else self.xp.concatenate(parts)

    def predict(self, X: Any, batch_size: int = 8192) -> Array:
        """Probabilities, as :meth:`predict_proba` (kept for old code; a scikit-learn user would read labels
        into the name, so prefer :meth:`predict_proba` or :meth:`predict_classes`)."""
        return self.predict_proba(X, batch_size)
