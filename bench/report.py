"""Where a benchmark's figures go: its own section of a markdown file, replaced on each run."""

from __future__ import annotations

from pathlib import Path


def markers(script: str) -> tuple[str, str]:
    """The comments that open and close the section of `script` (e.g. "bench/x.py")."""
    return f"<!-- {script}:begin -->", f"<!-- {script}:end -->"


def write_section(doc: Path, text: str, begin: str, end: str) -> None:
    """Replaces the section between `begin` and `end` in `doc` with `text` (which holds both
    markers), or appends `text` when the file has no such section yet."""
    old = doc.read_text() if doc.exists() else "# Benchmarks\n"
    if begin in old and end in old:
        new = old[: old.index(begin)] + text + old[old.index(end) + len(end) :]
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    doc.write_text(new)
