"""Defensive parsing of optimizer-LLM output: a small model's sloppy reply is rejected, never adopted."""
from __future__ import annotations

import re

from promptopt.types import normalize_prompt

_PREFIX = re.compile(r"^\s*(?:new |improved |rewritten |revised )?(?:instruction|prompt)\s*:\s*", re.I)
_CHATTER = re.compile(r"^\s*(?:sure|certainly|here(?:'s| is)|of course)\b[^\n]*:\s*$", re.I | re.M)


def strip_wrapping(text: str) -> str:
    """Remove chat chatter, a leading 'Instruction:' label, code fences and surrounding quotes."""
    text = _CHATTER.sub("", text).strip()
    text = re.sub(r"^```\w*\n?|\n?```$", "", text).strip()
    text = _PREFIX.sub("", text).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        text = text[1:-1].strip()
    return text


def clean_prompt(raw: str, *, parent: str = "", error: str | None = None, max_chars: int = 2000,
                 min_chars: int = 8) -> tuple[str, str | None]:
    """A usable prompt from a reply, or (text, reason) with the reason it was rejected."""
    if error:
        return "", f"optimizer call failed: {error}"
    text = strip_wrapping(raw)
    if len(text) < min_chars:
        return text, "empty or too short"
    if len(text) > max_chars:
        return text, f"too long ({len(text)} chars)"
    if parent and normalize_prompt(text) == normalize_prompt(parent):
        return text, "copy of the parent prompt"
    if "{" in text and re.search(r"\{(?:input|prompt)\}", text):
        return text, "contains template fields"
    return text, None


def extract_marked(raw: str, start: str, end: str) -> str | None:
    """The text between the first `start` marker and the next `end` (case-insensitive). After a
    `start` with no `end` (a reply cut off, or a model that forgot to close), the rest up to a blank
    line. None when the reply has no `start` marker at all."""
    lower = raw.lower()
    i = lower.find(start.lower())
    if i < 0:
        return None
    body = raw[i + len(start):]
    j = body.lower().find(end.lower())
    return body[:j] if j >= 0 else body.split("\n\n")[0]
