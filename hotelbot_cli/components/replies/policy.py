"""The reply policy: what kind of reply each intent gets, and the hotel's own wording for the replies that
do not come from its documents.

A policy is a JSON file (the packaged default: ``policy_es.json`` beside this module; a version keeps its own
copy in ``replies/policy.json``)::

    {"format": "hotelbot-reply-policy/1", "fallback": "...", "no_answer": "...",
     "slots": {"DATE": "las fechas", ...},                         # how a missing entity is asked for
     "intents": {"book_room": {"kind": "action", "reply": "... reservar[ una {ROOM_TYPE}][ {DATE}].",
                               "needs": ["DATE", "GUESTS"], "how": "cómo hacer una reserva"}, ...}}

Kinds: ``social`` (the template), ``fallback`` (the intent's template, else the policy's ``fallback``),
``action`` (the template filled with the message's entities, then the document sentence that says how to
do it, found with the ``how`` query, then a request for the ``needs`` entities the message lacks; with
``"questions": "grounded"`` a question about the topic gets a grounded answer instead), ``grounded`` (the
sentence(s) of the documents that answer the message). An intent the policy does not list is grounded.

Templates: ``{SLOT}`` is the text of the message's entity of that type (several dates: the span from the
first to the last, with a preposition just before it); ``[...]`` is dropped when a slot inside it is
empty. Templates must not state facts (numbers, times, e-mails, names): the fact check of every reply
only accepts facts that its cited passages or the message contain.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ...errors import DataError
from .facts import extract_facts, fold

POLICY_FORMAT = "hotelbot-reply-policy/1"
ASK_MISSING = "Indíquenos también {listed}, por favor."  # what an action reply asks for when entities are missing
DEFAULT_POLICY = Path(__file__).with_name("policy_es.json")
KINDS = ("social", "fallback", "action", "grounded")
SLOT = re.compile(r"\{([A-Z_]+)\}")
OPTIONAL = re.compile(r"\[([^\[\]]*)\]")
LEAD_WORDS = frozenset({"del", "el", "de", "desde", "para", "entre", "los", "las", "dia", "dias", "la", "a", "al"})
QUESTION_START = re.compile(
    r"^\W*(que|cuanto|cuanta|cuantos|cuantas|cuando|como|donde|cual|cuales|hasta cuando|"
    r"a que|se puede|puedo|podemos|hay|tienen|tiene|es posible|me cobran|cobran|cuesta)\b"
)
REQUEST = re.compile(
    r"\b(quiero|quisiera|queremos|quisieramos|necesito|necesitamos|deseo|deseamos|me gustaria|"
    r"nos gustaria|porfa|por favor|hagan|haganme|mandenme|manden|envien|traiganme|traigan)\b"
)
ACCENTED_QUESTION = re.compile(r"\b(qué|cómo|cuánto|cuánta|cuántos|cuántas|cuándo|dónde|cuál|cuáles)\b")
POLITE = re.compile(r"\b(por favor|porfa|porfavor)\b")


@dataclass(frozen=True)
class IntentPolicy:
    kind: str
    reply: str = ""
    needs: tuple[str, ...] = ()
    how: str = ""
    questions: str = ""  # "grounded": questions get a grounded answer (action intents)


@dataclass
class Policy:
    intents: dict[str, IntentPolicy]
    fallback: str
    no_answer: str
    slots: dict[str, str] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "the reply policy") -> Policy:
        if not isinstance(data, Mapping) or data.get("format") != POLICY_FORMAT:
            raise DataError(f'{where} is not a reply policy ("format": "{POLICY_FORMAT}" expected)')
        intents: dict[str, IntentPolicy] = {}
        for name, spec in (data.get("intents") or {}).items():
            if not isinstance(spec, Mapping) or spec.get("kind") not in KINDS:
                raise DataError(f'{where}: intent {name!r} needs a "kind" among {", ".join(KINDS)}')
            policy = IntentPolicy(
                spec["kind"],
                str(spec.get("reply") or ""),
                tuple(spec.get("needs") or ()),
                str(spec.get("how") or ""),
                str(spec.get("questions") or ""),
            )
            if policy.kind == "social" and not policy.reply:
                raise DataError(f'{where}: the social intent {name!r} needs a "reply"')
            if policy.kind == "action" and not (policy.reply and policy.how):
                raise DataError(f'{where}: the action intent {name!r} needs a "reply" and a "how" query')
            stated = [f.text for f in extract_facts(SLOT.sub("", policy.reply))]
            if stated:
                raise DataError(
                    f"{where}: the reply of {name!r} states {', '.join(stated)}: templates must not "
                    'state facts (put them in the documents; the action\'s "how" sentence cites them)'
                )
            intents[str(name)] = policy
        for key in ("fallback", "no_answer"):
            if not str(data.get(key) or "").strip():
                raise DataError(f'{where} needs a "{key}" reply')
            if extract_facts(str(data[key])):
                raise DataError(f'{where}: the "{key}" reply must not state facts')
        return cls(intents, str(data["fallback"]), str(data["no_answer"]), dict(data.get("slots") or {}), dict(data))

    @classmethod
    def load(cls, path: Path | None = None) -> Policy:
        path = Path(path) if path is not None else DEFAULT_POLICY
        try:
            data = json.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            raise DataError(f"reply policy not found: {path}") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"cannot read the reply policy {path}: {exc}") from None
        return cls.from_dict(data, str(path))

    def texts(self) -> list[str]:
        """The hotel's own wording: every template (slots removed), the fallback, no_answer and the request
        for missing entities."""
        return [
            SLOT.sub("", t)
            for t in [
                *(p.reply for p in self.intents.values()),
                self.fallback,
                self.no_answer,
                *self.slots.values(),
                ASK_MISSING,
            ]
        ]

    def of(self, intent: str | None) -> IntentPolicy:
        return self.intents.get(intent or "", IntentPolicy("grounded"))


def is_question(text: str) -> bool:
    """A question about the topic rather than a request to act ("¿hasta cuándo puedo cancelar gratis?" vs
    "quiero cancelar la reserva 1234"). A polite request without an interrogative ("¿me pueden cancelar la
    reserva, por favor?") is a request; so is a request verb ("quiero", "necesito", not "no quiero") unless
    the message ends asking ("...?"); otherwise a question mark or an interrogative (at the start, or accented
    anywhere: "cómo", "cuánto") makes it a question."""
    folded = fold(text)
    interrogative = bool(QUESTION_START.match(folded) or ACCENTED_QUESTION.search(text.lower()))
    if POLITE.search(folded) and not interrogative:
        return False
    if re.search(r"(?<!\bno )" + REQUEST.pattern, folded) and not folded.rstrip().endswith("?"):
        return False
    return "?" in text or interrogative


def _entity_text(message: str, found: Sequence[Mapping[str, Any]], lead: bool) -> str:
    """One slot's text: a single entity as written; several (dates: "del 3 al 5 de marzo") the span from
    the first to the last when close, else joined with "y"; with ``lead`` (dates) a preposition just before
    is kept ("del 3 al 5", "el martes"), the template cannot know which one fits."""
    spans = sorted((int(e["start"]), int(e["end"])) for e in found)
    start, end = spans[0][0], spans[-1][1]
    if end - start > 40:
        return " y ".join(message[s:e] for s, e in spans)
    before = message[:start].split() if lead else []
    words: list[str] = []
    while before and fold(before[-1]) in LEAD_WORDS and len(words) < 2:
        words.insert(0, before.pop())
    return " ".join(words + [message[start:end]])


def entity_slots(message: str, entities: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    by_type: dict[str, list[Mapping[str, Any]]] = {}
    for e in entities:
        by_type.setdefault(str(e["type"]), []).append(e)
    # several dates make one range; of the other types the first one found (a template names one room type)
    return {
        kind: _entity_text(message, found if kind == "DATE" else found[:1], kind == "DATE")
        for kind, found in by_type.items()
    }


def render(template: str, slots: Mapping[str, str]) -> str:
    """Fill ``{SLOT}``s; drop each ``[...]`` group with an empty slot (see the module docstring)."""

    def group(m: re.Match[str]) -> str:
        names = SLOT.findall(m.group(1))
        return SLOT.sub(lambda s: slots[s.group(1)], m.group(1)) if all(slots.get(n) for n in names) else ""

    text = OPTIONAL.sub(group, template)
    text = SLOT.sub(lambda s: slots.get(s.group(1), ""), text)
    return re.sub(r"\s+([.,;:!?)])", r"\1", re.sub(r"\s{2,}", " ", text)).strip()


def ask_for(policy: Policy, needs: Sequence[str], slots: Mapping[str, str]) -> str:
    missing = [policy.slots.get(n, n.lower()) for n in needs if not slots.get(n)]
    if not missing:
        return ""
    listed = missing[0] if len(missing) == 1 else ", ".join(missing[:-1]) + " y " + missing[-1]
    return ASK_MISSING.replace("{listed}", listed)


__all__ = ["DEFAULT_POLICY", "IntentPolicy", "Policy", "ask_for", "entity_slots", "is_question", "render"]
