#!/usr/bin/env python3
"""Train an MLP on MNIST with one command: ``python scripts/train_mnist.py [flags]``.

The same as ``python -m gpu_backprop train [flags]``; ``--help`` lists the flags.
Runs from a source checkout without installing.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpu_backprop.tools.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
