"""Personal data masked out of a guest's message before it is written anywhere (``serve --capture``).

What is replaced, and by what (the placeholders are stable, so near-duplicates still group together):

* ``<EMAIL>``: e-mail addresses;
* ``<CARD>``: card-like numbers: 13 to 19 digits, optionally in groups separated by spaces or dashes;
* ``<ACCOUNT>``: bank account numbers of 18 to 24 digits (Spanish CCC, Argentine CBU, Mexican CLABE);
* ``<IBAN>``: IBANs (two letters, two check digits, 11 to 30 letters/digits, spaces allowed);
* ``<PHONE>``: phone numbers with a ``+``/``00`` prefix (9-15 digits), Spanish ones (9 digits from 6-9) and
  Latin American ones (10 digits), with spaces, dots, dashes or parentheses: "+34 600 123 456", "91 123 45
  67", "612.345.678", "55 1234 5678";
* ``<ID>``: Spanish DNI/NIE numbers ("12345678Z", "12.345.678-Z", "X1234567L") and passport numbers after
  "pasaporte" ("pasaporte: AB1234567");
* ``<PERSON>``: person names: the spans the version's entity model tags PERSON; without a model too, the words
  after "me llamo", "mi nombre es", "a nombre de" whatever their case ("me llamo ana garcía y ..."), and the
  capitalised words after "soy", "de parte de", "habla", ... ("soy Luis Pérez", not "soy alérgico").

Dates ("15/08/2026"), times, prices and room numbers ("la 1204") are not personal data and stay: they are
what a reviewer needs to label a message.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

PLACEHOLDERS = ("<EMAIL>", "<CARD>", "<ACCOUNT>", "<IBAN>", "<PHONE>", "<ID>", "<PERSON>")

EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+", re.UNICODE)
IBAN = re.compile(r"\b[A-Za-z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,4})?\b")
# 13-24 digits, optionally grouped by single spaces or dashes: a card (13-19, never starting with 0: its first
# digit is the industry; an international phone starts "0034") or a bank account (Spanish CCC 20, Argentine CBU
# 22, Mexican CLABE 18). No Luhn check: masking a number that only looks like one costs nothing.
LONG_NUMBER = re.compile(r"(?<![\d+])(?:\d[ -]?){12,23}\d(?!\d)")
# + or 00 prefix (optional), then digits with separators; the shape is checked in _phone_like
DATE_LIKE = re.compile(r"\b\d{1,2}-\d{1,2}-\d{2,4}\b")  # "12-08-2026 15-08-2026" is two dates, not a card
PHONE = re.compile(r"(?<![\w+])(?:\+|00)?\(?\d[\d .()-]{7,20}\d(?![\w])")
# DNI 12345678Z / 12.345.678-Z, NIE X1234567L: the letter upper case and joined (not "12345678 a nombre")
DNI = re.compile(r"(?<![\w.])(?:\d{8}|\d{2}\.\d{3}\.\d{3}|[XYZ]-?\d{7})-?[A-Z](?!\w)")
PASSPORT = re.compile(r"(?i)\b(pasaporte|passport)([\s:.]+(?:(?:n[úu]mero|num|n[º°o.])[\s:.]*)?)([A-Z0-9]{6,12})\b")
NAME_WORD = r"[A-ZÁÉÍÓÚÑÜ][a-záéíóúñü'’]+(?:-[A-ZÁÉÍÓÚÑÜ][a-záéíóúñü'’]+)?"
# after "soy", "habla", ... only capitalised words are a name ("soy alérgico" is not); after an explicit cue
# ("me llamo", "mi nombre es", "a nombre de") the next words are, whatever their case, up to a word below
INTRODUCTION = re.compile(
    r"(?i:\b(?:soy|de parte de|reserva de|habla|le escribe|les escribe)\s+)"
    rf"({NAME_WORD}(?:\s+(?:de\s+(?:la\s+)?|del\s+|i\s+|y\s+)?{NAME_WORD}){{0,3}})"
)
EXPLICIT = re.compile(
    r"(?i)\b(?:me llamo|mi nombre es|a nombre de|mi nombre:|nombre:)[\s:]+((?:[^\W\d_][\w'’-]*\s*){1,4})"
)
NOT_NAME = {
    "y",
    "e",
    "o",
    "u",
    "de",
    "del",
    "la",
    "el",
    "los",
    "las",
    "con",
    "para",
    "por",
    "que",
    "en",
    "a",
    "al",
    "pero",
    "porque",
    "desde",
    "hasta",
    "mi",
    "su",
    "tu",
    "le",
    "les",
    "me",
    "se",
    "nos",
    "es",
    "soy",
    "estoy",
    "llego",
    "llegamos",
    "tengo",
    "tenemos",
    "quiero",
    "queremos",
    "reserva",
    "habitación",
    "habitacion",
    "gracias",
}


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
    text = sub(
        LONG_NUMBER,
        "<CARD>",
        "card",
        text,
        check=lambda s: 13 <= _digits(s) <= 19 and not s.startswith("0") and not DATE_LIKE.search(s),
    )
    text = sub(
        LONG_NUMBER, "<ACCOUNT>", "account", text, check=lambda s: 18 <= _digits(s) <= 24 and not DATE_LIKE.search(s)
    )
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

    def explicit(m: re.Match[str]) -> str:
        words = m.group(1).split()
        kept = []
        for word in words:
            if word.lower().strip("'’") in NOT_NAME or word.startswith("<"):
                break
            kept.append(word)
        if not kept:
            return m.group(0)
        counts["person"] += 1
        rest = m.group(1)[m.group(1).index(kept[-1]) + len(kept[-1]) :]
        return m.group(0)[: m.start(1) - m.start(0)] + "<PERSON>" + rest

    text = EXPLICIT.sub(explicit, text)
    return Masked(text, dict(counts))


# What training sees instead of a placeholder (`prepare --add`): guests write real names and numbers, never
# "<PERSON>", so a model trained on placeholders would learn a token it never meets. Fixed, made-up values.
SURROGATES = {
    "<EMAIL>": "cliente@example.com",
    "<CARD>": "4111 1111 1111 1111",
    "<ACCOUNT>": "0049 1500 05 1234567892",
    "<IBAN>": "ES91 2100 0418 4502 0005 1332",
    "<PHONE>": "612 345 678",
    "<ID>": "12345678Z",
    "<PERSON>": "Laura Gómez",
}


def with_surrogates(text: str) -> tuple[str, int]:
    """``text`` with every placeholder replaced by its made-up surrogate, and how many were replaced."""
    count = 0
    for placeholder, value in SURROGATES.items():
        count += text.count(placeholder)
        text = text.replace(placeholder, value)
    return text, count


def _digits(s: str) -> int:
    return sum(c.isdigit() for c in s)


def _phone_like(s: str) -> bool:
    """With a + or 00 prefix: 9-15 digits. Without: a Spanish number (9 digits from 6, 7, 8 or 9, at most 4
    groups: "600 123 456", "91 123 45 67", "612.345.678") or a Latin American one (10 digits in at most 3
    groups: "55 1234 5678", "11 1234-5678", "300 123 4567"). Room lists ("1204 1205 1206") and other runs
    of numbers are not phones."""
    digits = _digits(s)
    if s.startswith(("+", "00")):
        return 9 <= digits <= 15
    groups = len(re.findall(r"\d+", s))
    if digits == 9:
        return s.lstrip("(")[0] in "6789" and groups <= 4
    return digits == 10 and groups <= 3


def _merged(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(a, b) for a, b in out]


__all__ = ["PLACEHOLDERS", "SURROGATES", "Masked", "mask", "with_surrogates"]
