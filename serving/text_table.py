"""Plain-text tables for the terminal commands (``modserve keys list``, ``modserve audit
summary``, ``modserve dataset check``): cells in aligned columns, two spaces apart."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def aligned(rows: Sequence[Sequence[str]], right: Iterable[int] = ()) -> list[str]:
    """One line per row; the columns in ``right`` (numbers) are right-aligned, the others
    left-aligned; trailing spaces are cut."""
    right = set(right)
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return [
        "  ".join(
            cell.rjust(w) if c in right else cell.ljust(w)
            for c, (cell, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()
        for r in rows
    ]
