"""``python -m fakecupy -m MODULE ARGS...`` or ``python -m fakecupy SCRIPT ARGS...``: run it with the stand-in as ``cupy``.

``tests/`` must be on ``PYTHONPATH`` (for ``fakecupy``) and so must the code under test.
"""

from __future__ import annotations

import runpy
import sys

import fakecupy


def main() -> None:
    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(2)
    fakecupy.install()
    if args[0] == "-m":
        sys.argv = [args[1], *args[2:]]
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = args
        runpy.run_path(args[0], run_name="__main__")


if __name__ == "__main__":
    main()
