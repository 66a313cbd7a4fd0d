"""Personal data masked out of a guest's message before it is written anywhere (``serve --capture``).

What is replaced, and by what (the placeholders are stable, so near-duplicates still group together):

* ``<EMAIL>``: e-mail addresses;
* ``<CARD>``: card-like numbers: 13 to 19 digits, optionally in groups separated by spaces or dashes;
* ``<IBAN>``: IBANs (two letters, two check digits, 11 to 30 letters/digits, spaces allowed);
* ``<PHONE>``: phone numbers: 9 to 15 digits with optional ``+``/``00`` prefix and separators (spaces, dots,
  dashes, parentheses), e.g. "+34 600 123 456", "91 123 45 67", "600-123-456";
* ``<ID>``: Spanish DNI/NIE numbers ("12345678Z", "X1234567L") and passport-like codes after "pasaporte";
* ``<PERSON>``: person names: the spans the version's entity model tags PERSON, and, with or without a model,
  the capitalised words after a self-introduction ("me llamo Ana García", "a nombre de Luis Pérez").

Dates ("15/08/2026"), times, prices and room numbers ("la 1204") are not personal data and stay: they are
what a reviewer needs to label a message.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

PLACEHOLDERS = ("<EMAIL>", "<CARD>", "<IBAN>", "<PHONE>", "<ID>", "<PERSON>")

EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+", re.UNICODE)
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,4})?\b")
# 13-19 digits, in groups of 2+ separated by single spaces or dashes (card-like; no Luhn check: masking a
# number that only looks like a card costs nothing)
CARD = re.compile(r"(?<![\d+])(?:\d[ -]?){12,18}\d(?!\d)")
# + or 00 prefix (optional), then 9-15 digits with separators; the digit count is checked in code
PHONE = re.compile(r"(?<![\w+])(?:\+|00)?\(?\d[\d .()-]{7,20}\d(?![\w])")
DNI = re.compile(r"\b(?:\d{8}|[XYZxyz][- ]?\d{7})[- ]?[A-Za-z]\b")
PASSPORT = re.compile(r"(?i)\b(pasaporte|passport)(\s+(?:n[º°o.]*\s*)?)([A-Z0-9]{6,12})\b")
NAME_WORD = r"[A-ZÁÉÍÓÚÑÜ][a-záéíóúñü]+(?:-[A-ZÁÉÍÓÚÑÜ][a-záéíóúñü]+)?"
INTRODUCTION = re.compile(
    r"(?i:\b(?:me llamo|mi nombre es|soy|a nombre de|de parte de|reserva de|habla|le escribe|les escribe)\s+)"
    rf"({NAME_WORD}(?:\s+(?:de\s+(?:la\s+)?|del\s+)?{NAME_WORD}){{0,3}})"
)


@dataclass(frozen=True)
class Masked:
    """A masked text and how many of each kind of personal data were replaced."""

    text: str
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def masked(self) -> bool:
        return bool(self.counts)


def mask(text: str, person_spans: Sequence[tuple[int, int]] = ()) -> Masked:
    """``text`` with its personal data replaced by placeholders. ``person_spans``: (start, end) character
    offsets of person names in ``text`` (the entity model's PERSON spans), masked first."""
    counts: Counter[str] = Counter()
    for start, end in sorted(_merged(person_spans), reverse=True):
        if 0 <= start < end <= len(text):
            text = text[:start] + "<PERSON>" + text[end:]
            counts["person"] += 1

    def sub(pattern: re.Pattern[str], placeholder: str, kind: str, s: str, check=None) -> str:
        def replace(m: re.Match[str]) -> str:
            if check is not None and not check(m.group(0)):
                return m.group(0)
            counts[kind] += 1
            return placeholder

        return pattern.sub(replace, s)

    text = sub(EMAIL, "<EMAIL>", "email", text)
    text = sub(IBAN, "<IBAN>", "iban", text, check=lambda s: sum(c.isdigit() for c in s) >= 10)
    # a card number never starts with 0 (its first digit is the industry), an international phone does ("0034")
    text = sub(CARD, "<CARD>", "card", text, check=lambda s: 13 <= _digits(s) <= 19 and not s.startswith("0"))
    text = sub(PHONE, "<PHONE>", "phone", text, check=_phone_like)
    text = sub(DNI, "<ID>", "id", text)

    def passport(m: re.Match[str]) -> str:
        if not any(c.isdigit() for c in m.group(3)):
            return m.group(0)
        counts["id"] += 1
        return m.group(1) + m.group(2) + "<ID>"

    text = PASSPORT.sub(passport, text)

    def name(m: re.Match[str]) -> str:
        counts["person"] += 1
        return m.group(0)[: m.start(1) - m.start(0)] + "<PERSON>"

    text = INTRODUCTION.sub(name, text)
    return Masked(text, dict(counts))


def _digits(s: str) -> int:
    return sum(c.isdigit() for c in s)


def _phone_like(s: str) -> bool:
    digits = _digits(s)
    if not 9 <= digits <= 15:
        return False
    if s.startswith(("+", "00")):
        return True
    # a national number: 9 digits (Spain) or more in groups; not a date-like or price-like run
    return digits >= 9 and not re.search(r"\d{1,2}\.\d{3}\.\d{3}(?:,\d+)?$", s)


def _merged(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(a, b) for a, b in out]


__all__ = ["PLACEHOLDERS", "Masked", "mask"]
