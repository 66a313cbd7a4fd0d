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
    "dos": 2,
    "tres": 3,
    "cuatro": 4,
    "cinco": 5,
    "seis": 6,
    "siete": 7,
    "ocho": 8,
    "nueve": 9,
    "diez": 10,
    "once": 11,
    "doce": 12,
    "trece": 13,
    "catorce": 14,
    "quince": 15,
    "dieciseis": 16,
    "diecisiete": 17,
    "dieciocho": 18,
    "diecinueve": 19,
    "veinte": 20,
    "veintiuno": 21,
    "veintiun": 21,
    "veintidos": 22,
    "veintitres": 23,
    "veinticuatro": 24,
    "veinticinco": 25,
    "veintiseis": 26,
    "veintisiete": 27,
    "veintiocho": 28,
    "veintinueve": 29,
    "treinta": 30,
    "cuarenta": 40,
    "cincuenta": 50,
    "sesenta": 60,
    "setenta": 70,
    "ochenta": 80,
    "noventa": 90,
    "cien": 100,
    "ciento": 100,
    "doscientos": 200,
    "doscientas": 200,
    "trescientos": 300,
    "trescientas": 300,
    "cuatrocientos": 400,
    "quinientos": 500,
    "seiscientos": 600,
    "setecientos": 700,
    "ochocientos": 800,
    "novecientos": 900,
    "mil": 1000,
}
# Capitalised words that are not names even in the middle of a sentence (after a colon, in a title, a
# greeting) or that every hotel text uses: never an unsupported "name".
NOT_NAMES = frozenset(
    """
a al ante bajo buenas buenos con de del desde el en entre hasta hola la las lo los para por que se sin sobre su sus
un una uno unos unas y o u usted ustedes le les me mi mis nos nuestro nuestra gracias disculpe lamentamos lo siento
si no sí claro perfecto estimado estimada señor señora sr sra don doña wifi wi-fi ok
""".split()
)
# Words that open hotel replies without naming anything (the strict check's sentence-initial names skip them)
COMMON_OPENERS = frozenset(
    """
claro perfecto entendido lamentamos sentimos disculpe encantados enhorabuena bienvenido bienvenida buenas buenos
hola gracias desde para puede pueden puedo tenemos tiene tienen ofrecemos reserve escriba llame marque avise pida
pregunte solicite deje cuelgue consulte recuerde ojo lo la el los las en con por si no tambien ademas
una un hay es son esta estan estamos cuesta cuestan sirve sirven abre abren cierra cierran se le les nos su sus
""".split()
)  # folded (no accents, lower case)
EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
URL = re.compile(r"(?:https?://|www\.)[^\s<>()\"']+", re.IGNORECASE)
PHONE = re.compile(r"(?<![\w:.,])\+?\d[\d ]{6,}\d(?![\w:])")
TIME = re.compile(r"(?<![\d:.,])([01]?\d|2[0-4])[:.h]([0-5]\d)(?:\s*h\b)?(?!\d)(?![:.,]\d)")
HOUR = re.compile(r"(?<![\w:.,])([01]?\d|2[0-4])\s*(h|am|pm|a\.\s?m\.|p\.\s?m\.)(?![\w])", re.IGNORECASE)
DOTTED_PHONE = re.compile(r"(?<![\w.,])\d{2,3}(?:[.-]\d{2,3}){2,3}(?![\w.,]?\d)")
# Any other token holding a digit ("3ª", "50m2", "2x1", "Faro2024"): a fact as written
DIGIT_TOKEN = re.compile(r"[^\s,;:()«»\"'¿?¡!]*\d[^\s,;:()«»\"'¿?¡!]*")
NUMBER = re.compile(r"(?<![\w.,:])\d+(?:[.,]\d+)?(?!\w)")
WORD = re.compile(r"[^\W\d_]+(?:[-'][^\W\d_]+)*", re.UNICODE)


def fold(text: str) -> str:
    """Lower case, no accents, one space between words: how facts are compared."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(plain.lower().split())


@dataclass(frozen=True)
class Fact:
    kind: str  # number | time | email | phone | url | name | token
    text: str  # as written in the reply
    value: str  # normalised: what must appear among the sources' facts (or words, for a name)
    start: int = -1  # where it starts in the text it was found in

    def to_dict(self) -> dict[str, str]:
        return {"type": self.kind, "text": self.text}


def _number_value(raw: str) -> str:
    value = raw.replace(",", ".")
    if "." in value:
        whole, frac = value.split(".", 1)
        if len(frac) == 3 and whole and not whole.startswith("0") and int(whole) < 1000:  # 1.200 (thousands), not 1.5
            return str(int(whole + frac))
        return str(float(value)).rstrip("0").rstrip(".")
    return str(int(value))


def _sentence_start(text: str, start: int) -> bool:
    """Whether the word at ``start`` opens a sentence (or a quote, a parenthesis, a list item)."""
    i = start - 1
    while i >= 0 and text[i] in " \t":
        i -= 1
    return i < 0 or text[i] in '.!?¡¿:;\n«"(' or (text[i] in "-*•" and (i == 0 or text[i - 1].isspace()))


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
        add(m.start(), m.end(), Fact("url", m.group(), fold(m.group().rstrip(".,;:")), m.start()))
    for m in EMAIL.finditer(text):
        if free(m.start(), m.end()):
            add(m.start(), m.end(), Fact("email", m.group(), fold(m.group()), m.start()))
    for pattern in (PHONE, DOTTED_PHONE):
        for m in pattern.finditer(text):
            digits = re.sub(r"\D", "", m.group())
            if len(digits) >= 7 and free(m.start(), m.end()):
                add(m.start(), m.end(), Fact("phone", m.group(), digits[-9:], m.start()))
    for m in TIME.finditer(text):
        if free(m.start(), m.end()):
            add(m.start(), m.end(), Fact("time", m.group(), f"{int(m.group(1))}:{m.group(2)}", m.start()))
    for m in HOUR.finditer(text):
        if free(m.start(), m.end()):
            hour = int(m.group(1)) + (12 if fold(m.group(2)).startswith("p") and int(m.group(1)) < 12 else 0)
            add(m.start(), m.end(), Fact("time", m.group(), f"{hour}:00", m.start()))
    for m in NUMBER.finditer(text):
        if free(m.start(), m.end()):
            add(m.start(), m.end(), Fact("number", m.group(), _number_value(m.group()), m.start()))
    for m in DIGIT_TOKEN.finditer(text):
        token = m.group().rstrip(".")
        if token and free(m.start(), m.start() + len(token)):
            add(m.start(), m.start() + len(token), Fact("token", token, fold(token), m.start()))
    for m in WORD.finditer(text):
        if not free(m.start(), m.end()):
            continue
        word = m.group()
        folded = fold(word)
        if folded in NUMBER_WORDS:
            add(m.start(), m.end(), Fact("number", word, str(NUMBER_WORDS[folded]), m.start()))
        elif word[0].isupper() and folded not in NOT_NAMES and len(word) > 1 and not _sentence_start(text, m.start()):
            add(m.start(), m.end(), Fact("name", word, folded, m.start()))
    return [f for _, f in sorted(facts, key=lambda pair: pair[0])]


def fact_keys(text: str) -> set[str]:
    """The facts of ``text`` other than names, as comparable "kind:value" keys (what two texts share)."""
    return {f"{f.kind}:{f.value}" for f in extract_facts(text) if f.kind != "name"}


class Evidence:
    """What a set of source texts (cited passages + the guest's message) supports: their facts and words."""

    def __init__(self, texts: Iterable[str]) -> None:
        self.values: set[str] = set()
        self.words: set[str] = set()
        self.hours: set[str] = set()
        self.tokens: set[str] = set()
        for text in texts:
            for fact in extract_facts(text):
                self.values.add(f"{fact.kind}:{fact.value}")
                if fact.kind == "time":  # "7:00" supports "a las 7" (only as an hour: see supports)
                    self.hours.add(str(int(fact.value.split(":")[0])))
            self.words.update(fold(w) for w in WORD.findall(text))
            self.tokens.update(fold(t).rstrip(".") for t in text.split())

    def supports(self, fact: Fact, context: str = "") -> bool:
        """Whether the sources hold ``fact``; ``context``: the reply text just before it ("a las 7")."""
        if fact.kind == "name":
            return fact.value in self.words
        if fact.kind == "token":  # as written, within a token of the sources ("(faro2024)" holds "faro2024")
            return any(fact.value in t for t in self.tokens)
        if f"{fact.kind}:{fact.value}" in self.values:
            return True
        if fact.kind == "time" and not re.search(r"[:.]\d", fact.text) and fact.value.split(":")[0] in self.hours:
            return True  # "23h" names the hour of a "23:00" (an hour-only form: minutes are not claimed)
        return (
            fact.kind == "number"
            and fact.value in self.hours
            and bool(re.search(r"\b(las?|sobre|hasta|desde|antes de|despu[eé]s de)\s*$", fold(context)))
        )


def unsupported_facts(reply: str, sources: Sequence[str], *, strict: bool = False) -> list[Fact]:
    """The facts of ``reply`` that no text of ``sources`` (cited passages, the guest's message) contains.
    ``strict`` (the evaluation's independent oracle): capitalised words that open a sentence count as names
    too ("Alhambra y ..."), unless the sources use the word."""
    evidence = Evidence(sources)
    found = [
        fact
        for fact in extract_facts(reply)
        if not evidence.supports(fact, reply[max(0, fact.start - 12) : max(fact.start, 0)])
    ]
    if strict:
        for m in WORD.finditer(reply):
            word, folded = m.group(), fold(m.group())
            if (
                word[0].isupper()
                and len(word) > 1
                and folded not in NOT_NAMES
                and folded not in NUMBER_WORDS
                and _sentence_start(reply, m.start())
                and folded not in evidence.words
                and folded not in COMMON_OPENERS
            ):
                found.append(Fact("name", word, folded, m.start()))
    return sorted(found, key=lambda f: f.start)


def contains_fact(reply: str, fact: str) -> bool:
    """Whether ``reply`` states the expected ``fact`` (see the module docstring)."""
    if re.search(r"(?<![\w.,:])" + re.escape(fold(fact)) + r"(?![\w]|[.,:]\d)", fold(reply)):
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


__all__ = ["Evidence", "Fact", "contains_fact", "extract_facts", "fact_keys", "fold", "unsupported_facts"]
