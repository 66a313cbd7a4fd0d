"""Facts in a reply, and whether its sources support them.

A *fact* is what a guest could act on and a hotel could be held to: a number (prices, floors, counts,
nights, percentages; Spanish number words from "dos" to "cien" count as their digits), a time, an
e-mail, a phone number, a URL, and a proper name (a capitalised word that does not start a sentence,
e.g. "Lonja", "Santa Bárbara"). :func:`extract_facts` finds them; :func:`unsupported_facts` lists those of
a reply that appear neither in the passages it cites nor in the guest's own message. A reply with an
unsupported fact is never sent (see :mod:`.pipeline`).

:func:`contains_fact` is the evaluation's test that a reply states an expected fact ("20 €" is stated by
"20 euros", "10:00" by "10.00 h"): every number, time and address of the expected fact must be among the
reply's, and every other word of it must be in the reply (accents and case ignored).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Iterable, Sequence

NUMBER_WORDS = {
    "dos": 2, "tres": 3, "cuatro": 4, "cinco": 5, "seis": 6, "siete": 7, "ocho": 8, "nueve": 9, "diez": 10,
    "once": 11, "doce": 12, "trece": 13, "catorce": 14, "quince": 15, "dieciseis": 16, "diecisiete": 17,
    "dieciocho": 18, "diecinueve": 19, "veinte": 20, "veinticuatro": 24, "treinta": 30, "cuarenta": 40,
    "cincuenta": 50, "sesenta": 60, "noventa": 90, "cien": 100,
}
# Capitalised words that are not names even in the middle of a sentence (after a colon, in a title, a
# greeting) or that every hotel text uses: never an unsupported "name".
NOT_NAMES = frozenset("""
a al ante bajo buenas buenos con de del desde el en entre hasta hola la las lo los para por que se sin sobre su sus
un una uno unos unas y o u usted ustedes le les me mi mis nos nuestro nuestra gracias disculpe lamentamos lo siento
si no sí claro perfecto estimado estimada señor señora sr sra don doña wifi wi-fi ok
""".split())
EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
URL = re.compile(r"(?:https?://|www\.)[^\s<>()\"']+", re.IGNORECASE)
PHONE = re.compile(r"(?<![\w:.,])\+?\d[\d ]{6,}\d(?![\w:])")
TIME = re.compile(r"(?<![\d:.,])([01]?\d|2[0-4])[:.h]([0-5]\d)(?:\s*h\b)?(?!\d)(?![:.,]\d)")
NUMBER = re.compile(r"(?<![\w.,:])\d+(?:[.,]\d+)?(?!\w)")
WORD = re.compile(r"[^\W\d_]+(?:[-'][^\W\d_]+)*", re.UNICODE)
SENTENCE_START = re.compile(r"(^|[.!?¡¿:;\n«\"(]\s*|\s-\s|^\s*[-*]\s+)$")


def fold(text: str) -> str:
    """Lower case, no accents, one space between words: how facts are compared."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(plain.lower().split())


@dataclass(frozen=True)
class Fact:
    kind: str    # number | time | email | phone | url | name
    text: str    # as written in the reply
    value: str   # normalised: what must appear among the sources' facts (or words, for a name)

    def to_dict(self) -> dict[str, str]:
        return {"type": self.kind, "text": self.text}


def _number_value(raw: str) -> str:
    value = raw.replace(",", ".")
    if "." in value:
        whole, frac = value.split(".", 1)
        if len(frac) == 3 and whole and int(whole) < 1000:  # 1.200 (thousands), not 1.5
            return str(int(whole + frac))
        return str(float(value)).rstrip("0").rstrip(".")
    return str(int(value))


def extract_facts(text: str) -> list[Fact]:
    """Every fact in ``text``, in order of appearance (a span counts once: an e-mail's digits are not numbers)."""
    facts: list[tuple[int, Fact]] = []
    taken: list[tuple[int, int]] = []

    def free(start: int, end: int) -> bool:
        return all(end <= s or start >= e for s, e in taken)

    def add(start: int, end: int, fact: Fact) -> None:
        taken.append((start, end))
        facts.append((start, fact))

    for m in URL.finditer(text):
        add(m.start(), m.end(), Fact("url", m.group(), fold(m.group().rstrip(".,;:"))))
    for m in EMAIL.finditer(text):
        if free(m.start(), m.end()):
            add(m.start(), m.end(), Fact("email", m.group(), fold(m.group())))
    for m in PHONE.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        if len(digits) >= 7 and free(m.start(), m.end()):
            add(m.start(), m.end(), Fact("phone", m.group(), digits))
    for m in TIME.finditer(text):
        if free(m.start(), m.end()):
            add(m.start(), m.end(), Fact("time", m.group(), f"{int(m.group(1))}:{m.group(2)}"))
    for m in NUMBER.finditer(text):
        if free(m.start(), m.end()):
            add(m.start(), m.end(), Fact("number", m.group(), _number_value(m.group())))
    for m in WORD.finditer(text):
        if not free(m.start(), m.end()):
            continue
        word = m.group()
        folded = fold(word)
        if folded in NUMBER_WORDS:
            add(m.start(), m.end(), Fact("number", word, str(NUMBER_WORDS[folded])))
        elif word[0].isupper() and folded not in NOT_NAMES and len(word) > 1 \
                and not SENTENCE_START.search(text[:m.start()]):
            add(m.start(), m.end(), Fact("name", word, folded))
    return [f for _, f in sorted(facts, key=lambda pair: pair[0])]


class Evidence:
    """What a set of source texts (cited passages + the guest's message) supports: their facts and words."""

    def __init__(self, texts: Iterable[str]) -> None:
        self.values: set[str] = set()
        self.words: set[str] = set()
        for text in texts:
            for fact in extract_facts(text):
                self.values.add(f"{fact.kind}:{fact.value}")
                if fact.kind == "time":  # "7:00" supports "a las 7"
                    hour, minute = fact.value.split(":")
                    self.values.add(f"number:{hour}")
                    if minute != "00":
                        self.values.add(f"number:{int(minute)}")
            self.words.update(fold(w) for w in WORD.findall(text))

    def supports(self, fact: Fact) -> bool:
        if fact.kind == "name":
            return fact.value in self.words
        if f"{fact.kind}:{fact.value}" in self.values:
            return True
        if fact.kind == "number" and fact.value.endswith("00") and f"time:{int(fact.value) // 100}:00" in self.values:
            return False  # "1400" is not "14:00"
        return fact.kind == "phone" and any(v.endswith(":" + fact.value) for v in self.values)


def unsupported_facts(reply: str, sources: Sequence[str]) -> list[Fact]:
    """The facts of ``reply`` that no text of ``sources`` (cited passages, the guest's message) contains."""
    evidence = Evidence(sources)
    return [fact for fact in extract_facts(reply) if not evidence.supports(fact)]


def contains_fact(reply: str, fact: str) -> bool:
    """Whether ``reply`` states the expected ``fact`` (see the module docstring)."""
    if fold(fact) in fold(reply):
        return True
    expected = extract_facts(fact)
    stated = Evidence([reply])
    for item in expected:
        if item.kind != "name" and not stated.supports(item):
            return False
    numeric = {fold(f.text) for f in expected if f.kind != "name"}
    words = [fold(w) for w in WORD.findall(fact) if fold(w) not in numeric and fold(w) not in NUMBER_WORDS]
    reply_words = {fold(w) for w in WORD.findall(reply)}
    missing = [w for w in words if w not in reply_words and w not in ("euros", "eur", "h", "horas")]
    return bool(expected or words) and not missing


__all__ = ["Evidence", "Fact", "contains_fact", "extract_facts", "fold", "unsupported_facts"]
