"""What the command-line tools share: an argument parser whose errors are one line."""

from __future__ import annotations

import argparse

__all__ = ["Parser", "UsageError"]


class UsageError(Exception):
    """A bad flag or input: exit status 2 with this one line."""


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (not the whole usage block)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")
