"""Phrase segmentation and the phrase-level edits of GrIPS / Plum (delete, swap, add back, paraphrase).

Plum finds phrases with a constituency parser; we need no model download, so a sentence is cut at
punctuation and before function words (conjunctions, prepositions, determiners, "to"), which gives
chunks of one to four words much like the parser's shallow phrases:

    "Classify the sentiment of the review as positive or negative."
    -> [Classify] [the sentiment] [of the review] [as positive] [or negative] .

A text is a tuple of `Piece`s; rendering concatenates each piece with the whitespace after it, so
`render(segment(t)) == t`. Only word pieces are editable; punctuation stays where it is. Edits work on
positions (not string replacement), then `tidy` repairs spacing, doubled punctuation and capitals.
Everything here is pure: randomness comes in as an `random.Random`, paraphrases as finished text.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, replace
from typing import Any, Iterable, Sequence

DELETE, SWAP, ADD, PARAPHRASE = "delete", "swap", "add", "paraphrase"
OPS = (DELETE, SWAP, ADD, PARAPHRASE)

# A phrase starts before one of these once the phrase so far holds a content word.
BOUNDARY_WORDS = frozenset("""
and or but nor so yet because if whether that which who whom whose when where while although though
unless until than as of in on at by for with without about from into onto over under between through
after before during to like per via the a an this these those each every your its their our my any
""".split())
_TOKEN = re.compile(r"\s+|\w+(?:['’-]\w+)*|[^\w\s]")
_SENTENCE_END = frozenset(".!?")


@dataclass(frozen=True)
class Piece:
    """A phrase (editable) or a punctuation mark, with the whitespace that follows it."""

    text: str
    gap: str = ""
    editable: bool = True


Pieces = tuple[Piece, ...]


@dataclass(frozen=True)
class Edit:
    """One edit, as logged in a candidate's meta["edit"]. `index` is the position of the edited piece
    in the input's pieces; for add, the piece the phrase goes after (-1 = in front of everything)."""

    op: str
    index: int
    phrase: str
    other: int | None = None  # swap: the second position
    new: str | None = None  # paraphrase: the replacement phrase, once known

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"op": self.op, "index": self.index, "phrase": self.phrase}
        if self.other is not None:
            d["other"] = self.other
        if self.new is not None:
            d["new"] = self.new
        return d


def segment(text: str, level: str = "phrase") -> Pieces:
    """Cut a text into phrases (or single words) and punctuation; lossless: render(segment(t)) == t."""
    pieces: list[Piece] = []
    words: list[str] = []  # the phrase being built, words and the spaces between them
    has_content = False

    def starts_phrase(word: str) -> bool:
        return level == "word" or (has_content and word.lower() in BOUNDARY_WORDS)

    def close_phrase(gap: str = "") -> None:
        nonlocal words, has_content
        if words:
            pieces.append(Piece("".join(words), gap))
        words, has_content = [], False

    tokens = _TOKEN.findall(text)
    lead = ""
    for i, tok in enumerate(tokens):
        if tok.isspace():
            nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
            if not words and not pieces:
                lead += tok  # leading whitespace: kept in front of the first piece
            elif words and "\n" not in tok and _is_word(nxt) and not starts_phrase(nxt):
                words.append(tok)
            elif words:
                close_phrase(tok)
            else:
                pieces[-1] = replace(pieces[-1], gap=pieces[-1].gap + tok)
        elif _is_word(tok):
            if words and starts_phrase(tok):
                close_phrase()
            words.append(tok)
            has_content = has_content or tok.lower() not in BOUNDARY_WORDS
        else:
            close_phrase()
            pieces.append(Piece(tok, "", editable=False))
    close_phrase()
    if lead and pieces:
        pieces[0] = replace(pieces[0], text=lead + pieces[0].text)
    return tuple(pieces)


def _is_word(tok: str) -> bool:
    return bool(tok) and (tok[0].isalnum() or tok[0] == "_")


def render(pieces: Iterable[Piece]) -> str:
    return "".join(p.text + p.gap for p in pieces)


def phrases(text: str, level: str = "phrase") -> list[str]:
    """The editable phrases of a text, in order."""
    return [p.text.strip() for p in segment(text, level) if p.editable]


def editable_positions(pieces: Sequence[Piece]) -> list[int]:
    return [i for i, p in enumerate(pieces) if p.editable]


def tidy(text: str) -> str:
    """Repair what cutting and moving phrases leaves behind; leaves well-formed text unchanged."""
    lines = []
    for line in text.split("\n"):
        line = re.sub(r"(?<=\S)[ \t]+", " ", line)  # indentation stays
        line = re.sub(r" +([,;:.!?)\]])", r"\1", line)  # no space before closing punctuation
        line = re.sub(r"([(\[]) +", r"\1", line)
        line = re.sub(r"\(\s*\)|\[\s*\]", "", line)  # brackets emptied by a deletion
        line = re.sub(r"([,;:])(?:\s*[,;:])+", r"\1", line)  # ", ," -> ","
        line = re.sub(r"[,;:]\s*([.!?])", r"\1", line)  # ", ." -> "."
        line = re.sub(r"([.!?])(?:\s*[,;:.])+", r"\1", line)  # ". ," -> "."
        line = re.sub(r"^(\s*)[,;:.!?]+\s*", r"\1", line)  # a line never starts with punctuation
        # a sentence starts with a capital ("e.g. the" is left alone: one letter before the dot)
        line = re.sub(r"(?<=\w\w)([.!?] +)([a-z])", lambda m: m.group(1) + m.group(2).upper(), line)
        lines.append(line.rstrip())
    out = "\n".join(lines).strip()
    return out[:1].upper() + out[1:]


def _sentence_start(pieces: Sequence[Piece], i: int) -> bool:
    """Whether piece i begins a sentence (or a line)."""
    if i == 0:
        return True
    prev = pieces[i - 1]
    return "\n" in prev.gap or (not prev.editable and prev.text in _SENTENCE_END)


def _fit_case(pieces: list[Piece], i: int) -> None:
    """A moved phrase that began a sentence ("Classify ...") loses its capital mid-sentence.
    Acronyms and "I" keep theirs."""
    p = pieces[i]
    first = p.text.lstrip().split(" ", 1)[0]
    if _sentence_start(pieces, i) or first == "I" or len(first) < 1 or not first[0].isupper():
        return
    if first[1:] == first[1:].lower():
        lead = len(p.text) - len(p.text.lstrip())
        pieces[i] = replace(p, text=p.text[:lead] + p.text[lead].lower() + p.text[lead + 1:])


def delete(pieces: Pieces, i: int) -> Pieces:
    out = list(pieces)
    if i > 0 and "\n" in pieces[i].gap:
        out[i - 1] = replace(out[i - 1], gap=pieces[i].gap)  # keep the line break
    del out[i]
    return tuple(out)


def swap(pieces: Pieces, i: int, j: int) -> Pieces:
    out = list(pieces)
    out[i], out[j] = replace(pieces[i], text=pieces[j].text), replace(pieces[j], text=pieces[i].text)
    _fit_case(out, i)
    _fit_case(out, j)
    return tuple(out)


def insert(pieces: Pieces, phrase: str, after: int) -> Pieces:
    """Put `phrase` after piece `after` (-1: in front of everything)."""
    out = list(pieces)
    if after >= 0 and not out[after].gap:
        out[after] = replace(out[after], gap=" ")
    out.insert(after + 1, Piece(phrase, " "))
    for k in (after + 1, after + 2):  # the phrase, and the one it pushed from a sentence start
        if k < len(out) and out[k].editable:
            _fit_case(out, k)
    return tuple(out)


def substitute(pieces: Pieces, i: int, new: str) -> Pieces:
    out = list(pieces)
    out[i] = replace(pieces[i], text=new)
    return tuple(out)


def plan_edit(pieces: Pieces, rng: random.Random, ops: Sequence[str], deleted: Sequence[str] = (),
              keep_one: bool = True) -> Edit | None:
    """Draw one applicable edit (op uniform among those possible here), or None if none applies.
    `keep_one`: never delete the last phrase. A paraphrase edit comes back without its `new` text:
    the caller asks a model for it."""
    positions = editable_positions(pieces)
    possible = [op for op in ops if (op == DELETE and len(positions) > keep_one) or (op == SWAP and len(positions) >= 2)
                or (op == ADD and deleted) or (op == PARAPHRASE and positions)]
    if not possible:
        return None
    op = rng.choice(possible)
    if op == ADD:
        phrase = rng.choice(list(deleted))
        return Edit(ADD, rng.choice([-1, *positions]), phrase)
    i = rng.choice(positions)
    if op == SWAP:
        j = rng.choice([k for k in positions if k != i])
        return Edit(SWAP, i, pieces[i].text.strip(), other=j)
    return Edit(op, i, pieces[i].text.strip())


def apply_edit(pieces: Pieces, edit: Edit) -> Pieces:
    if edit.op == DELETE:
        return delete(pieces, edit.index)
    if edit.op == SWAP:
        assert edit.other is not None
        return swap(pieces, edit.index, edit.other)
    if edit.op == ADD:
        return insert(pieces, edit.phrase, edit.index)
    if edit.op == PARAPHRASE:
        if edit.new is None:
            raise ValueError("a paraphrase edit needs its new text before it is applied")
        return substitute(pieces, edit.index, edit.new)
    raise ValueError(f"unknown edit {edit.op!r}")


def deleted_after(deleted: Sequence[str], edit: Edit) -> tuple[str, ...]:
    """The add-back pool of the edited text: a deleted phrase joins it, a re-added one leaves it."""
    if edit.op == DELETE:
        return tuple(deleted) + (edit.phrase,) if edit.phrase not in deleted else tuple(deleted)
    if edit.op == ADD:
        return tuple(p for p in deleted if p != edit.phrase)
    return tuple(deleted)


def join(parts: Sequence[Pieces]) -> Pieces:
    """Concatenate piece lists from different texts (crossover, harmonies), spacing the seams."""
    out: list[Piece] = []
    for part in parts:
        if out and part and part[0].editable and not out[-1].gap:
            out[-1] = replace(out[-1], gap=" ")
        seam = len(out)
        out.extend(part)
        if 0 < seam < len(out) and out[seam].editable:
            _fit_case(out, seam)
    return tuple(out)


def crossover(a: Pieces, b: Pieces, cut: int) -> Pieces:
    """One-point crossover on piece lists (Plum GA-C): a's pieces before `cut`, b's from it on."""
    return join([a[:cut], b[cut:]])


def is_sane(text: str) -> bool:
    """Plum drops candidates with no ASCII letter; an edit must leave a real instruction."""
    return bool(re.search(r"[A-Za-z]", text))
