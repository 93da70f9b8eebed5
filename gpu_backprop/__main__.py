"""``python -m gpu_backprop train ...`` / ``python -m gpu_backprop bench ...``."""

import sys

from .tools.cli import main

sys.exit(main())
