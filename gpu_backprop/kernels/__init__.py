"""The elementwise work of a training step: each step once in NumPy, once as a named CuPy kernel.

Matrix products go to BLAS/cuBLAS (:mod:`.linalg`); everything between them is
here, by topic. Each public function takes its arrays, looks at where they
live, and runs either its NumPy body (the reference) or a CuPy kernel of the
same name, built on first use (:mod:`._cuda`). The GPU tests compare the two on
fresh random inputs; :mod:`._cpu` runs the NumPy bodies across the cores.

    activations   f(Z + b) forward, dA ⊙ f'(A) backward, f' from the output
    softmax       softmax + cross-entropy: loss and (A − Y)/N in one pass
    linalg        Z = X W, dW = Xᵀ dZ, dX = dZ Wᵀ, db = Σ dZ
    updates       SGD (momentum, Nesterov) and Adam/AdamW over the flat buffer
    random        a counter-based hash: the epochs' permutations
    dropout       Dropout's masks, from the same hash
    batchnorm     BatchNorm's normalisation and its backward
    gather        a batch gathered from the device-resident data set and scaled
    accuracy      the rows that predict their label, counted on the device

Every CuPy kernel is registered by name (:data:`ELEMENTWISE`, :data:`RAW`);
:func:`make_elementwise` and :func:`make_raw` build them exactly as the library
does, which lets ``gpu-backprop doctor`` and the tests compile every one
without a device. :func:`blas_threads` sets the CPU's BLAS threads up for
single-sample steps.
"""

from __future__ import annotations

from ._cpu import SCIPY_MAX_BATCH, blas_threads, defers_weight_grads, scipy_blas
from ._cuda import ELEMENTWISE, RAW, make_elementwise, make_raw, raw_source
from .accuracy import count_correct, predicted
from .activations import ACTIVATIONS, activation_backward, activation_forward, bias_activation
from .batchnorm import batchnorm_backward, batchnorm_normalize
from .dropout import dropout_forward
from .gather import gather_scale
from .linalg import column_sum, matmul, weight_grad
from .random import hash_uniform, random_permutation
from .softmax import softmax, softmax_cross_entropy
from .updates import adam_update, sgd_update

__all__ = ["ACTIVATIONS", "ELEMENTWISE", "RAW", "SCIPY_MAX_BATCH", "activation_backward", "activation_forward",
           "adam_update", "batchnorm_backward", "batchnorm_normalize", "bias_activation", "blas_threads", "column_sum",
           "count_correct", "defers_weight_grads", "dropout_forward", "gather_scale", "hash_uniform",
           "make_elementwise", "make_raw", "matmul", "predicted", "random_permutation", "raw_source", "scipy_blas",
           "sgd_update", "softmax", "softmax_cross_entropy", "weight_grad"]
