"""Running the joint NLU model: ONE encoder pass per text answers intents, sentiment and entities.

:class:`JointRunner` wraps the intent classifier's loaded predictor (the version's runtime: ONNX int8,
ONNX fp32 or torch; it imports torch only for the torch one). For each text it feeds
``query_prefix + clean_text(text)``, exactly what /classify and ``predict`` feed, reads the graph's three
outputs and returns, per text, the intent :class:`~hotelbot_cli.runtime.Prediction` (the same answer
``predictor.predict`` gives), the sentiment ``{"label", "confidence"}`` and the entities with offsets
into the caller's RAW text (the cleaned text's spans mapped back with
:func:`~hotelbot_cli.data.clean_text_with_offsets`).

The runner keeps its last answer per thread, so the three components' ``analyze`` calls on the same texts
(the Analyzer calls each in turn) cost one pass. :class:`JointEntities` and :class:`JointSentiment` give
the entity extractor's ``extract`` and the sentiment classifier's ``predict`` on top of it.
"""

from __future__ import annotations

import threading
from typing import Any, Sequence

from ...data import clean_text_with_offsets
from ...errors import ModelError
from ...runtime.layout import TORCH
from ...runtime.onnx import softmax
from ...runtime.prediction import Prediction, apply_fallback, check_texts
from ..entities.tagger import decode_token_logits, token_char_spans

OUTPUTS = ("logits", "sentiment_logits", "token_logits")
JOINT_FILE = "joint.json"  # in entities/ and sentiment/ of a version whose heads live in the classifier's model


def joint_tasks(predictor: Any) -> dict[str, Any] | None:
    """The ``tasks`` of a loaded classifier's config (torch: ClassifierConfig; ONNX: RuntimeClassifierConfig's
    extra keys); None for an intent-only classifier."""
    config = predictor.config
    tasks = getattr(config, "tasks", None)
    if tasks is None:
        tasks = (getattr(config, "extra", None) or {}).get("tasks")
    return tasks if isinstance(tasks, dict) and tasks else None


def _softmax(x: Any) -> Any:
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


class JointAnswer:
    """One text's answers from one pass."""

    __slots__ = ("prediction", "sentiment", "entities")

    def __init__(self, prediction: Prediction, sentiment: dict[str, Any], entities: list[dict[str, Any]]) -> None:
        self.prediction = prediction
        self.sentiment = sentiment
        self.entities = entities


class JointRunner:
    """See the module docstring. Build it with :meth:`of` so every component shares one per predictor."""

    def __init__(self, predictor: Any) -> None:
        tasks = joint_tasks(predictor)
        if tasks is None:
            raise ModelError(
                f"version {predictor.version}'s intent classifier is not a joint NLU model "
                "(no sentiment and entity heads)",
                hint="train one: hotelbot train --model-type nlu",
            )
        if getattr(getattr(predictor, "detector", None), "method", "softmax") != "softmax":
            raise ModelError(
                f"version {predictor.version}: the joint NLU model applies the softmax out-of-scope "
                "threshold only, and its classifier.json names another detector",
                hint="retrain it with this hotelbot (train --model-type nlu)",
            )
        self.predictor = predictor
        self.sentiment_labels = list(tasks["sentiment"]["labels"])
        self.tags = list(tasks["entities"]["tags"])
        self.entity_labels = list(tasks["entities"]["labels"])
        self.version = predictor.version
        self._local = threading.local()
        if predictor.runtime != TORCH:
            outputs = {o.name for o in predictor.session.get_outputs()}
            if not set(OUTPUTS) <= outputs:
                raise ModelError(
                    f"version {self.version}'s ONNX graph lacks the outputs "
                    f"{', '.join(sorted(set(OUTPUTS) - outputs))} of a joint NLU model"
                )

    _attach_lock = threading.Lock()

    @classmethod
    def of(cls, predictor: Any) -> JointRunner:
        """The runner attached to ``predictor`` (created on first use)."""
        runner = getattr(predictor, "_joint_runner", None)
        if runner is None:
            with cls._attach_lock:
                runner = getattr(predictor, "_joint_runner", None)
                if runner is None:
                    runner = cls(predictor)
                    predictor._joint_runner = runner
        return runner

    @staticmethod
    def attached(predictor: Any) -> JointRunner | None:
        return getattr(predictor, "_joint_runner", None)

    # ------------------------------------------------------------------ one pass
    def run(self, texts: Sequence[str], top_k: int = 3) -> list[JointAnswer]:
        """Per text, the three answers; the same texts again (same thread) reuse the last pass's outputs."""
        key = tuple(texts)
        last = getattr(self._local, "last", None)
        if last is not None and last[0] == key:
            cleaned, rows = last[1]
        else:
            check_texts(texts)
            cleaned, rows = self._run(list(texts)) if texts else ([], [])
            self._local.last = (key, (cleaned, rows))
        k = max(1, min(top_k, len(self.predictor.labels)))
        prefix_len = len(self.predictor.query_prefix)
        return [
            self._answer(text, clean, offsets, row, k, prefix_len)
            for text, (clean, offsets), row in zip(texts, cleaned, rows)
        ]

    def _run(self, texts: list[str]) -> tuple[list[Any], list[Any]]:
        """(each text cleaned with its offsets, each text's model outputs): the one encoder pass."""
        cleaned = [clean_text_with_offsets(t) for t in texts]
        prefix = self.predictor.query_prefix
        inputs = [prefix + c for c, _ in cleaned]
        rows = self._torch_rows(inputs) if self.predictor.runtime == TORCH else self._onnx_rows(inputs)
        return cleaned, rows

    def _onnx_rows(self, inputs: list[str]) -> list[tuple[Any, Any, Any, list[Any], list[int]]]:
        """Per text: (intent probs, sentiment probs, token logits, token offsets, special mask), one session
        call per text on int8 (as the classifier's predictor runs it, close calls re-run on fp32), one
        batch on fp32."""
        import numpy as np

        p = self.predictor
        ids, mask, offsets, special = p.tokenizer.encode_with_offsets(inputs)

        def own(row: int) -> tuple[list[Any], list[int]]:
            """The text's own tokens' offsets and special marks (the whole tokenizer pads them too)."""
            offs, spec = offsets[row], special[row]
            if len(offs) == mask.shape[1]:
                keep = mask[row].astype(bool)
                offs = [o for o, m in zip(offs, keep) if m]
                spec = [s for s, m in zip(spec, keep) if m]
            return offs, spec

        def one(row: int) -> tuple[Any, Any, Any, list[Any], list[int]]:
            intent, sentiment, tokens = p.run_row(ids, mask, row, OUTPUTS)
            probs = softmax(intent)[0]  # the predictor's own (float32), so /classify and /analyze agree to the digit
            if p.recheck is not None and p.recheck.needed(probs, p.threshold):
                intent, sentiment, tokens = p.run_row(ids, mask, row, OUTPUTS, p.recheck.open())
                probs = softmax(intent)[0]
            return (probs, _softmax(sentiment)[0], tokens[0], *own(row))

        if p.batch_invariant:
            if p.lanes > 1 and len(inputs) > 1:
                return list(p._lane_pool().map(one, range(len(inputs))))
            return [one(row) for row in range(len(inputs))]
        intent, sentiment, tokens = p.session.run(list(OUTPUTS), p.feed(ids, mask))
        intent_p, sentiment_p = softmax(intent), _softmax(sentiment)
        return [
            (intent_p[row], sentiment_p[row], tokens[row][np.flatnonzero(mask[row])], *own(row))
            for row in range(len(inputs))
        ]

    def _torch_rows(self, inputs: list[str]) -> list[tuple[Any, Any, Any, list[Any], list[int]]]:
        import numpy as np
        import torch

        p = self.predictor
        enc = p.tokenizer(
            inputs,
            padding=True,
            truncation=True,
            max_length=p.max_length,
            return_tensors="pt",
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
        )
        offsets = enc.pop("offset_mapping").tolist()
        special = enc.pop("special_tokens_mask").tolist()
        with torch.inference_mode():
            out = p.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        intent_p = torch.softmax(out["logits"].float(), dim=-1).numpy()  # as TorchPredictor computes it
        sentiment_p = _softmax(out["sentiment_logits"].float().numpy())
        tokens = out["token_logits"].float().numpy()
        mask = enc["attention_mask"].numpy()
        rows = []
        for row in range(len(inputs)):
            keep = np.flatnonzero(mask[row])
            rows.append(
                (
                    intent_p[row],
                    sentiment_p[row],
                    tokens[row][keep],
                    [offsets[row][i] for i in keep],
                    [special[row][i] for i in keep],
                )
            )
        return rows

    def _answer(
        self, text: str, clean: str, offsets: list[tuple[int, int]], row: Any, k: int, prefix_len: int
    ) -> JointAnswer:
        import numpy as np

        intent_p, sentiment_p, tokens, token_offsets, special = row
        order = np.argsort(-intent_p, kind="stable")[:k]
        labels = self.predictor.labels
        ranked = [{"intent": labels[i], "confidence": round(float(intent_p[i]), 6)} for i in order]
        intent, fallback = apply_fallback(ranked[0]["intent"], float(intent_p[order[0]]), self.predictor.threshold)
        prediction = Prediction(text, intent, ranked[0]["confidence"], ranked, fallback)
        best = int(np.argmax(sentiment_p))
        sentiment = {"label": self.sentiment_labels[best], "confidence": round(float(sentiment_p[best]), 6)}
        spans = token_char_spans(clean, token_offsets, special, prefix_len)
        decoded = decode_token_logits([tokens], [spans], self.tags, [clean])[0]
        entities = []
        for kind, start, end, confidence in decoded:
            raw_start, raw_end = offsets[start][0], offsets[end - 1][1]
            entities.append(
                {
                    "type": kind,
                    "text": text[raw_start:raw_end],
                    "start": raw_start,
                    "end": raw_end,
                    "confidence": round(float(confidence), 6),
                }
            )
        return JointAnswer(prediction, sentiment, entities)


class JointEntities:
    """The entity extractor's interface (``extract``, ``extract_spans``, ``config.labels``) on a joint runner."""

    def __init__(self, runner: JointRunner) -> None:
        self.runner = runner
        self.version = runner.version
        self.labels = runner.entity_labels
        self.config = type("JointEntityConfig", (), {"labels": runner.entity_labels, "tags": runner.tags})()

    def extract(self, texts: Sequence[str], batch_size: int = 32) -> list[list[dict[str, Any]]]:
        return [answer.entities for answer in self.runner.run(texts)]

    def extract_spans(self, texts: Sequence[str], batch_size: int = 32) -> list[list[tuple[str, int, int, float]]]:
        return [[(e["type"], e["start"], e["end"], e["confidence"]) for e in found] for found in self.extract(texts)]


class JointSentiment:
    """The sentiment classifier's interface (``predict``, ``predict_labels``, ``labels``) on a joint runner."""

    def __init__(self, runner: JointRunner) -> None:
        self.runner = runner
        self.version = runner.version
        self.labels = runner.sentiment_labels

    def predict(self, texts: Sequence[str], batch_size: int = 32) -> list[dict[str, Any]]:
        return [answer.sentiment for answer in self.runner.run(texts)]

    def predict_labels(self, texts: Sequence[str], batch_size: int = 32) -> list[str]:
        return [p["label"] for p in self.predict(texts, batch_size)]


__all__ = ["JOINT_FILE", "JointAnswer", "JointEntities", "JointRunner", "JointSentiment", "OUTPUTS", "joint_tasks"]
