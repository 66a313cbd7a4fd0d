"""The reply pipeline's parts that need no model: the fact check, the policy and its templates, sentence
splitting, answer labels and the ranker's training."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hotelbot_cli.components.replies.facts import contains_fact, extract_facts, unsupported_facts
from hotelbot_cli.components.replies.policy import DEFAULT_POLICY, Policy, entity_slots, is_question, render
from hotelbot_cli.components.replies.ranking import (FEATURES, Sentence, SentenceRanker, answer_label,
                                                     split_sentences, stems)
from hotelbot_cli.errors import DataError


def kinds(text):
    return [(f.kind, f.value) for f in extract_facts(text)]


def test_facts_of_every_kind_are_found_and_normalised():
    assert kinds("de 7:00 a 10.30 h, 18 € o 18,50 euros") == [("time", "7:00"), ("time", "10:30"),
                                                                ("number", "18"), ("number", "18.5")]
    assert kinds("Escriba a reservas@hotel.example o visite https://hotel.example/spa.") == [
        ("email", "reservas@hotel.example"), ("url", "https://hotel.example/spa")]
    # a phone is its last 9 digits: "+34 965 123 456" and "965.123.456" are the same number
    assert kinds("Llame al +34 965 123 456 desde la 512") == [("phone", "965123456"), ("number", "512")]
    assert kinds("o al 965.123.456") == [("phone", "965123456")]
    assert kinds("a las 23h o a las 8 pm") == [("time", "23:00"), ("time", "20:00")]
    assert kinds("la 3ª planta, 50m2, 2x1") == [("token", "3a"), ("token", "50m2"), ("token", "2x1")]  # folded
    assert kinds("setenta y ocho, mil") == [("number", "70"), ("number", "8"), ("number", "1000")]
    assert kinds("0,750 litros") == [("number", "0.75")]
    assert kinds("Guardamos los objetos tres meses") == [("number", "3")]  # number words are numbers
    assert kinds("Cene en La Lonja, junto al castillo de Santa Bárbara.") == [
        ("name", "lonja"), ("name", "santa"), ("name", "barbara")]
    assert kinds("Hola. Gracias por escribir: Sí, claro.") == []  # sentence starts and courtesy words are not names
    assert kinds("1.200 metros y 1.5 km") == [("number", "1200"), ("number", "1.5")]


def test_the_first_issue_examples_are_caught():
    """The issue's hallucinated breakfast reply: the source says 7:00-10:30 and 18 €, the reply 11:00 and 6 €."""
    source = "El desayuno se sirve de 7:00 a 10:30 en el restaurante La Lonja y cuesta 18 €."
    bad = unsupported_facts("No, el desayuno termina a la piscina de 7:00 a 11:00, con un suplemento de 6 €.", [source])
    assert [(f.kind, f.text) for f in bad] == [("time", "11:00"), ("number", "6")]
    assert unsupported_facts("El desayuno es de 7:00 a 10:30 en La Lonja, a las 7 ya está abierto.", [source]) == []
    # a fact the guest wrote is supported by the message itself
    assert unsupported_facts("Reserva del 3 al 5 de marzo para 2 adultos.", ["quiero del 3 al 5 de marzo, 2 adultos"]) == []
    assert [f.text for f in unsupported_facts("Pregunte por Marta en recepción.", [source])] == ["Marta"]
    assert [f.kind for f in unsupported_facts("Escriba a info@otro.example", [source])] == ["email"]
    # found in review: an hour of the sources is not a price, a code is compared as written, "23h" needs a 23:00
    assert [f.text for f in unsupported_facts("Son 10 € y abre a las 7.", [source])] == ["10"]
    assert [f.text for f in unsupported_facts("La clave es Faro1999.", ["La clave es Faro2024."])] == ["Faro1999"]
    assert unsupported_facts("Cierra a las 23h.", ["Cierra a las 23:00."]) == []
    assert [f.text for f in unsupported_facts("Cierra a las 22h.", ["Cierra a las 23:00."])] == ["22h"]
    assert unsupported_facts("Llame al 952 123 456.", ["Teléfono: +34 952 123 456."]) == []
    # the evaluation's stricter oracle also counts a capitalised word opening a sentence, unless the sources use it
    assert unsupported_facts("Alhambra y Generalife.", [source]) != [] and [f.text for f in unsupported_facts(
        "Alhambra y Generalife. Claro, en La Lonja.", [source], strict=True)] == ["Alhambra", "Generalife"]


def test_contains_fact_accepts_equivalent_writing_only():
    assert contains_fact("Cuesta 20 euros por noche.", "20 €")
    assert contains_fact("Abre de 10.00 h a 20:00.", "10:00")
    assert contains_fact("Está en la planta 8, con vistas.", "planta 8")
    assert contains_fact("Las toallas son GRATUITAS", "gratuitas")
    assert not contains_fact("Cuesta 25 euros.", "20 €")
    assert not contains_fact("Está en la planta 7.", "planta 8")
    assert not contains_fact("Abre a las 10:30.", "10:00")
    # whole facts only: "18 €" is not in "118 €", "7:00" not in "17:00", "planta 1" not in "planta 12"
    assert not contains_fact("Cuesta 118 €.", "18 €") and not contains_fact("Abre a las 17:00.", "7:00")
    assert not contains_fact("Está en la planta 12.", "planta 1") and contains_fact("Cuesta 18 €.", "18 €")


def test_the_packaged_policy_loads_and_templates_render_with_entities():
    policy = Policy.load(DEFAULT_POLICY)
    assert policy.of("book_room").kind == "action" and policy.of("pet_policy").kind == "grounded"
    assert policy.of("an_intent_it_does_not_list").kind == "grounded"
    message = "quiero reservar una doble del 3 al 5 de marzo para 2 adultos"

    def span(kind, text):
        start = message.index(text)
        return {"type": kind, "start": start, "end": start + len(text)}

    entities = [span("ROOM_TYPE", "doble"), span("DATE", "3"), span("DATE", "5 de marzo"), span("GUESTS", "2 adultos")]
    slots = entity_slots(message, entities)
    assert slots == {"ROOM_TYPE": "doble", "DATE": "del 3 al 5 de marzo", "GUESTS": "2 adultos"}
    text = render(policy.of("book_room").reply, slots)
    assert text == "Con mucho gusto le ayudamos a reservar una doble del 3 al 5 de marzo para 2 adultos."
    assert render(policy.of("book_room").reply, {}) == "Con mucho gusto le ayudamos a reservar."
    assert unsupported_facts(text, [message]) == []


@pytest.mark.parametrize("text, question", [
    ("¿hasta cuándo puedo cancelar gratis?", True),
    ("me cobran si cancelo 3 días antes", True),
    ("quiero cancelar la reserva 78123", False),
    ("cancelar reserva porfa", False),
    ("¿Me pueden cancelar la reserva por favor?", False),
    ("¿Cuánto cuesta si quiero cambiar la fecha?", True),
    ("Nuestro tren sale a las 6:40 y no quiero hacer cola. ¿Hay forma de irse sin pasar por el mostrador?", True),
    ("no quiero hacer cola, cómo hago el check-out", True),
    ("Necesito un taxi para mañana a las 8", False),
    ("¿Podrían decirme a qué hora abre el spa, por favor?", True),
    ("Quería bajar al spa después de cenar, todavía está abierto? en qué planta es", True),
])
def test_questions_and_requests(text, question):
    assert is_question(text) is question


def test_a_policy_that_states_facts_or_lacks_parts_is_refused(tmp_path):
    good = json.loads(DEFAULT_POLICY.read_text("utf-8"))
    for change, message in [
        ({"intents": {"greeting": {"kind": "social", "reply": "Hola, llame al 9."}}}, "must not state facts"),
        ({"intents": {"book_room": {"kind": "action", "reply": "Claro."}}}, "needs a \"reply\" and a \"how\""),
        ({"intents": {"x": {"kind": "chat"}}}, "needs a \"kind\""),
        ({"no_answer": ""}, "needs a \"no_answer\""),
        ({"fallback": "Escriba a Juan."}, "must not state facts"),
        ({"format": "other"}, "is not a reply policy"),
    ]:
        path = tmp_path / "policy.json"
        path.write_text(json.dumps({**good, **change}, ensure_ascii=False), "utf-8")
        with pytest.raises(DataError, match=message):
            Policy.load(path)
    with pytest.raises(DataError, match="not found"):
        Policy.load(tmp_path / "missing.json")


def test_sentences_are_split_after_stops_and_at_list_items():
    text = ("El spa abre de 9:00 a 21:00. Está en la planta -1.\n- Circuito: 25 €.\n- Masaje 50 min: 65 €. "
            "Reserve en el 4... o en recepción. Sr. García no cuenta")
    assert split_sentences(text) == ["El spa abre de 9:00 a 21:00.", "Está en la planta -1.", "Circuito: 25 €.",
                                     "Masaje 50 min: 65 €.", "Reserve en el 4... o en recepción.",
                                     "Sr. García no cuenta"]
    assert stems("Las habitaciones y la habitación") == ["habit", "habit"]


def test_the_answering_sentence_is_the_one_sharing_the_reply_facts():
    candidates = [Sentence("a#0", "a", "spa.md", "Horario", 0, "El spa abre todos los días."),
                  Sentence("a#1", "a", "spa.md", "Horario", 1, "Abre de 9:00 a 21:00 en la planta -1."),
                  Sentence("b#0", "b", "piscina.md", "Horario", 0, "La piscina abre de 9:00 a 21:00.")]
    assert answer_label("El spa abre de 9:00 a 21:00.", candidates, "spa.md") == 1
    assert answer_label("El spa abre de 9:00 a 21:00.", candidates, "piscina.md") == 2
    assert answer_label("Pregunte en recepción.", candidates, "spa.md") is None


def test_the_ranker_learns_which_feature_marks_the_answer():
    rng = np.random.default_rng(0)
    groups = []
    for _ in range(40):
        x = rng.normal(size=(5, len(FEATURES)))
        y = int(rng.integers(5))
        x[y, 3] += 3.0  # the answering candidate overlaps most with the question
        groups.append((x, y))
    ranker = SentenceRanker.fit(groups)
    assert ranker.weights[3] == max(ranker.weights)
    assert sum(int(np.argmax(ranker.scores(x))) == y for x, y in groups) >= 36
    again = SentenceRanker.from_dict(json.loads(json.dumps(ranker.to_dict())))
    assert np.allclose(again.scores(groups[0][0]), ranker.scores(groups[0][0]))
    # A ranker trained before a feature was added reads only its own columns, by name.
    older = SentenceRanker.from_dict({"features": ["cosine", "overlap"], "weights": [0.5, 2.0], "mean": [0.0, 0.0],
                                      "scale": [1.0, 1.0]})
    x = groups[0][0]
    assert np.allclose(older.scores(x), 0.5 * x[:, FEATURES.index("cosine")] + 2.0 * x[:, FEATURES.index("overlap")])
    for bad in (["cosine", "a_feature_from_the_future"], []):
        with pytest.raises(ValueError, match="does not compute"):
            SentenceRanker.from_dict({**ranker.to_dict(), "features": bad})
    with pytest.raises(ValueError, match="do not match"):
        SentenceRanker.from_dict({**ranker.to_dict(), "features": ["cosine", "overlap"]})
    with pytest.raises(ValueError, match="no training question"):
        SentenceRanker.fit([])
