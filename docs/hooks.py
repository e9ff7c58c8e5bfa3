"""MkDocs hook: fills in the reference tables generated from the code (partial_ft.reference), so the
recipe keys and strategy options documented are always the ones the code has."""
from __future__ import annotations

from partial_ft.reference import render


def on_page_markdown(markdown: str, **kwargs) -> str:
    return render(markdown)
