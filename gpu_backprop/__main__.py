"""``python -m gpu_backprop train ...``, ``... bench ...`` and ``... doctor``: see :mod:`gpu_backprop.tools.cli`."""

import sys

from .tools.cli import main

sys.exit(main())
