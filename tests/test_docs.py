"""docs/api.md names every public name, and the README's reading order every module of the core."""

from __future__ import annotations

import re
from pathlib import Path

import gpu_backprop as gb

ROOT = Path(__file__).resolve().parent.parent


def test_every_public_name_is_in_the_api_reference() -> None:
    text = (ROOT / "docs" / "api.md").read_text()
    missing = [name for name in gb.__all__ if not re.search(rf"`(gb\.)?{re.escape(name)}\b", text)]
    assert missing == [], f"docs/api.md does not mention {missing}"


def test_the_readme_reading_order_names_every_core_module() -> None:
    text = (ROOT / "README.md").read_text()
    order = text[text.index("The pieces, in reading order"):]
    core = [p.name for p in (ROOT / "gpu_backprop").glob("*.py") if not p.name.startswith("_")]
    missing = [name for name in core if f"`{name}`" not in order]
    assert missing == [], f"the README's reading order leaves out {missing}"
