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


#: the walk through the core, in the README's order: the code that trains a network
WALK = ["backend.py", "kernels/__init__.py", "kernels/activations.py", "kernels/softmax.py", "kernels/linalg.py",
        "kernels/updates.py", "kernels/random.py", "params.py", "layers/__init__.py", "layers/base.py",
        "layers/activations.py", "layers/dense.py", "losses.py", "network.py", "optim.py", "trainer.py"]
WALK_LIMIT = 2550  #: a newcomer reads the core in about this many lines (issue 13 set 2,500; bug fixes since added some)


def _reading_order() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("The pieces, in reading order")
    return text[start:text.index("\n\n", start)]


def test_the_readme_reading_order_names_every_core_module() -> None:
    order = _reading_order()
    package = ROOT / "gpu_backprop"
    missing = [p.name for p in package.glob("*.py") if not p.name.startswith("_") and f"`{p.name}`" not in order]
    for sub in ("kernels", "layers"):  # the core's subpackages: `kernels/`, and each module as `dense` or `layers/dense`
        missing += [f"{sub}/{p.name}" for p in (package / sub).glob("*.py") if p.stem != "__init__"
                    and f"`{p.stem}`" not in order and f"`{sub}/{p.stem}`" not in order]
        missing += [f"{sub}/"] if f"`{sub}/`" not in order else []
    assert missing == [], f"the README's reading order leaves out {missing}"


def test_the_walk_is_as_long_as_the_readme_says() -> None:
    """The README states the walk's length in lines, and it is true (within 2%)."""
    lines = sum(len((ROOT / "gpu_backprop" / f).read_text().splitlines()) for f in WALK)
    stated = int(re.search(r"([\d,]+)\s+lines from `backend.py` to `trainer.py`", _reading_order().replace("\n", " "))
                 .group(1).replace(",", ""))
    assert abs(stated - lines) <= 0.02 * lines, f"the README says the walk is {stated} lines; it is {lines}"


def test_the_walk_stays_short() -> None:
    """The walk is the core a newcomer reads first; what it leans on is read after it, each part on its own."""
    lines = {f: len((ROOT / "gpu_backprop" / f).read_text().splitlines()) for f in WALK}
    longest = sorted(lines, key=lines.__getitem__)[-3:]
    assert sum(lines.values()) < WALK_LIMIT, (f"the walk is {sum(lines.values())} lines, over {WALK_LIMIT}; "
                                              f"the longest: {', '.join(f'{f} {lines[f]}' for f in longest)}")
