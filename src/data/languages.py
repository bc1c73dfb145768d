"""Language codes: ISO 639-1, and the code of a language as a Project Gutenberg header names it."""

from __future__ import annotations

import re


def is_language_code(code: object) -> bool:
    """Is ``code`` an ISO 639-1 code ("en", "fr", "zh")?"""
    import pycountry  # its import reads package metadata: only where a code is looked up

    return isinstance(code, str) and len(code) == 2 and code.islower() and \
        pycountry.languages.get(alpha_2=code) is not None


def language_code(name: str) -> str | None:
    """The ISO 639-1 code of a language as a Gutenberg header names it ("English", "Greek"); None if unknown.

    The ISO name is tried first, then the one language with a 639-1 code whose ISO name holds it as a word
    ("Greek" is "Modern Greek (1453-)").
    """
    import pycountry

    name = name.strip()
    try:
        found = pycountry.languages.lookup(name)
    except LookupError:
        holding = [lang for lang in pycountry.languages if hasattr(lang, "alpha_2")
                   and re.search(rf"\b{re.escape(name)}\b", lang.name, re.IGNORECASE)]
        found = holding[0] if len(holding) == 1 else None
    return getattr(found, "alpha_2", None)
