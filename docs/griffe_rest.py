"""A griffe extension for the API reference (mkdocs.yml): the docstrings
are reST, and the Markdown pages would show two of its marks as written.
A role (``:class:`Router```, ``:meth:`~RemoteError.to_wire```) becomes a
code span of its target (``~`` keeps the last name only, as in Sphinx), and
the ``::`` that introduces a literal block becomes ``:`` (the indented
block is a code block in Markdown already)."""

import re

import griffe

_ROLE = re.compile(r":(?:class|meth|func|data|attr|mod|exc|obj):`(~?)([^`]+)`")
_LITERAL = re.compile(r"(?<=\S)::$", re.M)


def _code(match):
    tilde, target = match.groups()
    return "`%s`" % (target.rsplit(".", 1)[-1] if tilde else target)


class ReSTMarks(griffe.Extension):
    def on_instance(self, *, obj, **kwargs):
        if obj.docstring is not None:
            text = _ROLE.sub(_code, obj.docstring.value)
            obj.docstring.value = _LITERAL.sub(":", text)
