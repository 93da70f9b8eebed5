"""``cupy.cuda.compiler``: ``CompileException`` (NVRTC's log as its message; here g++'s)."""

from __future__ import annotations

import re

_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z_0-9]*$")


class CompileException(Exception):
    def __init__(self, msg: str, source: str, name: str, options: tuple, backend: str = "nvrtc") -> None:
        self._msg, self.source, self.name, self.options, self.backend = msg, source, name, options, backend
        super().__init__(msg)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return type(self), (self._msg, self.source, self.name, self.options, self.backend)


def is_valid_kernel_name(name: str) -> bool:
    return _NAME.match(name) is not None
