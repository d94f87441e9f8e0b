"""Every ``docs/methods.md §N`` a docstring or comment of the package cites names a section that exists,
so a renumbered or removed section cannot leave stale pointers behind."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REF = re.compile(r"docs/methods\.md[^§\n]{0,3}((?:§ ?\d+(?:\.\d+)*[a-z]?(?:[–-]\d+(?:\.\d+)*)?(?:, )?)+)")


def _sections() -> set[str]:
    text = (ROOT / "docs" / "methods.md").read_text()
    return set(re.findall(r"^#+ (\d+(?:\.\d+)*[a-z]?)[ .]", text, re.M))


def test_every_cited_section_of_docs_methods_exists():
    sections, cited, missing = _sections(), 0, []
    for path in sorted((ROOT / "onnx_explain").rglob("*.py")):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            for m in REF.finditer(line):
                for num in re.findall(r"\d+(?:\.\d+)*[a-z]?", m.group(1)):
                    cited += 1
                    if num not in sections:
                        missing.append(f"{path.relative_to(ROOT)}:{i} cites §{num}")
    assert cited > 30 and not missing, "\n".join(missing)
