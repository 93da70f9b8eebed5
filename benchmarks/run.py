#!/usr/bin/env python3
"""Run the benchmark suite from a source checkout: ``python benchmarks/run.py [--quick] [flags]``.

The same as ``python -m gpu_backprop bench``; ``--help`` lists the flags.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpu_backprop.tools.bench import main

if __name__ == "__main__":
    sys.exit(main())
