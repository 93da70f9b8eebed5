"""The README's library example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_library_example_runs(capsys) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "the README has no python example"
    namespace: dict = {}
    exec(compile(blocks[0].replace("epochs=5", "epochs=1"), "README.md", "exec"), namespace)
    history = namespace["history"]
    assert history.epochs[-1]["val_accuracy"] > 0.85
    assert "dW = Xᵀ dZ" in capsys.readouterr().out
