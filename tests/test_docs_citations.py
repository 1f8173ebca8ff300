"""Docstrings and comments cite the project's own docs, and every citation resolves.

A citation is ``docs/<file>.md, "<section>"``; the section must be a ``##`` heading of that
file. Nothing in ``src`` may cite documents outside the repository.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CITATION = re.compile(r'docs/(\w+\.md),?\s*"([^"]+)"')
OUTSIDE = re.compile(r"\.\./shared|DESIGN\.md|spec/\w+\.md|\bspec §|\(spec \d|Ecosystem [A-Z]+-\d")


def _headings() -> dict[str, set[str]]:
    return {p.name: {line[3:].strip() for line in p.read_text(encoding="utf-8").splitlines()
                     if line.startswith("## ")} for p in (ROOT / "docs").glob("*.md")}


def _citations(text: str):
    for m in CITATION.finditer(text):
        # a title may be wrapped over lines of a comment or docstring
        yield m.group(1), " ".join(re.sub(r"\n\s*#:?", " ", m.group(2)).split())


def test_every_docs_citation_resolves():
    heads = _headings()
    bad, n = [], 0
    for path in sorted((ROOT / "src").rglob("*.py")):
        for doc, title in _citations(path.read_text(encoding="utf-8")):
            n += 1
            if title not in heads.get(doc, set()):
                bad.append(f"{path.relative_to(ROOT)}: docs/{doc}, \"{title}\"")
    assert n > 100, n  # the docstrings do cite the docs
    assert not bad, "citations of sections that do not exist:\n" + "\n".join(bad)


def test_nothing_cites_documents_outside_the_repository():
    bad = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
           for p in sorted((ROOT / "src").rglob("*.py"))
           for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
           if OUTSIDE.search(line)]
    assert not bad, "\n".join(bad)


def test_a_wrong_citation_is_caught():
    text = 'see (docs/tiling.md, "No such\n    #: section")'
    assert list(_citations(text)) == [("tiling.md", "No such section")]
    assert "No such section" not in _headings()["tiling.md"]
