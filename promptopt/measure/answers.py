"""Answer extraction and matching for generation tasks: what small models actually write.

`normalize_answer` is what exact match compares by default: case-folded, whitespace collapsed, and
surrounding punctuation removed (a sign before a number is kept; an answer made only of punctuation,
like a Dyck completion, is compared without removing any). `exact_match_strict` keeps the old rule
(outer whitespace only).

Extractors pull the answer out of the raw generation, chosen by name (spec files: `extract = "..."`;
Python: `make_task(extract=...)` or `get_extractor(...)`):

    strip         the whole output, outer whitespace removed
    first_line    the first non-empty line
    first_number  the first number (thousands separators and a trailing .0 dropped)
    last_number   the last number
    option_letter an option letter: "(B)", "B)", "Answer: B", or the first standalone capital A-Z
    regex:PATTERN the first match of PATTERN (its first group when it has one)
"""
from __future__ import annotations

import re
import string
import unicodedata
from typing import Callable

from promptopt.errors import ConfigError

_PUNCT = string.punctuation + "“”‘’«»…。，、！？：；"
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def normalize_answer(text: str) -> str:
    """Case-folded, whitespace-collapsed, surrounding punctuation removed (see the module doc)."""
    t = " ".join(unicodedata.normalize("NFKC", str(text)).split()).casefold()
    core = t.strip(_PUNCT + " ")
    if not core:
        return t
    start = len(t) - len(t.lstrip(_PUNCT + " "))
    if start and t[start - 1] in "-+" and core[:1].isdigit():  # "-5" keeps its sign, "(-5)" too
        core = t[start - 1] + core
    return core


def exact_match(prediction: str, example: "object") -> float:
    """1 when prediction and gold answer agree after `normalize_answer`."""
    return float(normalize_answer(prediction) == normalize_answer(getattr(example, "target", example)))


def exact_match_strict(prediction: str, example: "object") -> float:
    """1 when they agree after removing outer whitespace only (the behaviour before normalization)."""
    return float(prediction.strip() == str(getattr(example, "target", example)).strip())


def strip(text: str) -> str:
    return text.strip()


def first_line(text: str) -> str:
    return next((line.strip() for line in text.strip().splitlines() if line.strip()), "")


def _clean_number(num: str) -> str:
    num = num.replace(",", "")
    if "." in num:
        num = num.rstrip("0").rstrip(".")
    return num


def first_number(text: str) -> str:
    found = _NUMBER.findall(text)
    return _clean_number(found[0]) if found else ""


def last_number(text: str) -> str:
    found = _NUMBER.findall(text)
    return _clean_number(found[-1]) if found else ""


_LETTER_PATTERNS = (re.compile(r"\(([A-Za-z])\)"),
                    re.compile(r"answer(?:\s+is)?\s*[:\-]?\s*\(?([A-Za-z])\b", re.I),
                    re.compile(r"^\s*([A-Za-z])[\).:](?:\s|$)", re.M),
                    re.compile(r"\b([A-Z])\b"))


def option_letter(text: str) -> str:
    for pattern in _LETTER_PATTERNS:
        m = pattern.search(text)
        if m:
            return m.group(1).upper()
    t = text.strip()
    return t.upper() if len(t) == 1 and t.isalpha() else ""


def regex_extractor(pattern: str) -> Callable[[str], str]:
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise ConfigError(f"extract regex:{pattern!r} is not a valid regular expression: {e}") from None

    def extract(text: str) -> str:
        m = rx.search(text)
        if not m:
            return ""
        return (m.group(1) if rx.groups else m.group(0)).strip()
    extract.__name__ = f"regex:{pattern}"
    return extract


EXTRACTORS: dict[str, Callable[[str], str]] = {
    "strip": strip, "first_line": first_line, "first_number": first_number, "last_number": last_number,
    "option_letter": option_letter}


def get_extractor(name: "str | Callable[[str], str] | None") -> Callable[[str], str]:
    """An extractor by name (see the module doc), or a callable as is; None means strip."""
    if name is None:
        return strip
    if callable(name):
        return name
    if isinstance(name, str) and name.startswith("regex:"):
        return regex_extractor(name[len("regex:"):])
    if name not in EXTRACTORS:
        raise ConfigError(f"unknown extractor {name!r} (use {', '.join(EXTRACTORS)} or regex:PATTERN)")
    return EXTRACTORS[name]
