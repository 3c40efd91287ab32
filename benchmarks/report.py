"""BENCHMARKS.md sections written by the benchmark scripts: the text between a pair of HTML-comment markers."""

from __future__ import annotations

import pathlib


def replace_block(path: pathlib.Path, start: str, end: str, body: str, heading: str) -> None:
    """Put ``body`` between the markers ``start`` and ``end`` of ``path``; without them, append a
    ``## heading`` section holding the markers (a missing file starts as "# Benchmarks")."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{start}\n{body.strip()}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + f"\n\n## {heading}\n\n{block}\n"
    path.write_text(text)
