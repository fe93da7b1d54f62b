"""The documentation's code stays the tested code (README, Development).

`make docs` (in .ci/run) builds the site with warnings as errors, which
catches broken links and included files that are gone.  What it cannot see
is a program written into a page by hand, which no test runs and which
rots.  So: a Python block in docs/ is either an example included from its
file (``--8<-- "examples/NAME.py"``, a file the example tests run) or a
fragment of at most SHORT lines.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
#: Most lines a Python block written into a page may have.
SHORT = 12

_BLOCK = re.compile(r"^```python[^\n]*\n(.*?)^```", re.M | re.S)
_INCLUDE = re.compile(r'^--8<-- "([^"]+)"$')


def python_blocks():
    """Every ```python block of docs/, as pytest params named page:line."""
    blocks = []
    for page in sorted(DOCS.rglob("*.md")):
        text = page.read_text()
        for match in _BLOCK.finditer(text):
            line = text[:match.start()].count("\n") + 1
            blocks.append(pytest.param(match.group(1),
                                       id="%s:%d" % (page.relative_to(DOCS), line)))
    return blocks


def test_the_docs_have_python_blocks():
    assert len(python_blocks()) >= 10


@pytest.mark.parametrize("body", python_blocks())
def test_a_python_block_is_an_example_file_or_short(body):
    lines = body.strip().splitlines()
    include = _INCLUDE.match(lines[0]) if len(lines) == 1 else None
    if include:
        path = ROOT / include.group(1)
        assert path.parent == ROOT / "examples" and path.is_file(), include.group(1)
        return
    assert not any("--8<--" in line for line in lines), "one include per block, alone"
    assert len(lines) <= SHORT, ("%d lines written into the page: make it an example "
                                 "(examples/, run by the tests) and include it" % len(lines))


def test_every_example_is_in_the_docs():
    """Each program of examples/ is shown (included) or at least named by a
    page, so a new example does not go unseen."""
    text = "\n".join(page.read_text() for page in DOCS.rglob("*.md"))
    examples = sorted(p.name for p in (ROOT / "examples").glob("*.py")
                      if not p.name.startswith("_"))
    assert len(examples) >= 10
    assert [name for name in examples if "examples/" + name not in text] == []
