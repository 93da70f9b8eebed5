"""Work not yet proven on a GPU: kept apart from the core until a GPU run has measured it.

    persample   per-sample SGD fused into one launch per run of samples (CUDA source: persample.cu),
                with its NumPy reference; checked on the CPU by nvcc and a g++ emulation
    launches    counts the CuPy launches of a training step without a GPU (NumPy standing in)
"""
