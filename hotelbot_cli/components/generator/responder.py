"""Inference and evaluation: :class:`Responder` loads a version's generator (and its knowledge base, when
the version has one) and answers ``reply(messages) -> [{"message", "reply", "sources"}]``;
:func:`evaluate_generator` computes BLEU (sacrebleu corpus BLEU), ROUGE-L F1, perplexity (exp of the mean
token NLL of the reference replies) and response relevance (cosine of the embeddings of the generated and
reference replies), beside a retrieval-only baseline (the reply of the nearest training message by
embedding cosine) computed in the same run."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence, cast

from ...runtime.device import place
from ...config import load_settings
from ...data import TRAIN_FILE, VALIDATION_FILE, clean_messages, clean_text
from ...errors import DataError, ModelError, RegistryError
from .data import GENERATOR_DIR, ReplyPair, read_pairs_jsonl, read_prepared_replies, read_reply_file
from .inputs import Collator, Features, passages_text, token_nll
from .metrics import bleu_signature, corpus_bleu, corpus_rouge_l, perplexity
from .model import (
    DATA_SUBDIR,
    GENERATOR_FILE,
    GenerationSettings,
    GeneratorSpec,
    VocabMap,
    load_generator,
    quiet_transformers,
)

if TYPE_CHECKING:
    from ...registry import ModelRegistry, VersionInfo
    from ..knowledge.kb import Embedder, KnowledgeBase, SearchHit

DEFAULT_RELEVANCE_MODEL = "packaged:multilingual-e5-small"
MAX_SAMPLES = 12


class Responder:
    """A loaded generator (+ the version's knowledge base when it is grounded). Batch first:
    ``reply(messages)`` -> ``[{"message", "reply", "sources": [{"doc", "heading", "score"}]}]``."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        spec: GeneratorSpec,
        generation: GenerationSettings,
        vocab: VocabMap | None = None,
        knowledge: KnowledgeBase | None = None,
        version: str = "",
        onnx_encoder: Any = None,
    ) -> None:
        """``onnx_encoder``: the knowledge base's ONNX export of this generator's frozen encoder (same
        fingerprint): generation reads its states, so the torch encoder's memory-mapped weights are never read."""
        import torch  # heavy: imported when a generator is loaded

        self.model = place(model)  # HOTELBOT_DEVICE: CUDA when there is one, else the CPU
        self.tokenizer = tokenizer
        self.spec = spec
        self.generation = generation
        self.vocab = vocab
        self.knowledge = knowledge if spec.grounding_passages > 0 else None
        self.version = version
        self.onnx_encoder = onnx_encoder if spec.architecture == "encoder-decoder" else None
        self.features = Features(tokenizer, spec, vocab)
        self._torch = torch
        ids = spec.special_ids
        self._collator = Collator(
            spec.architecture,
            ids["pad"],
            vocab.pad if vocab else ids["pad"],
            int(model.config.decoder_start_token_id)
            if spec.architecture != "causal" and model.config.decoder_start_token_id is not None
            else ids["bos"],
        )

    @classmethod
    def from_version(
        cls, info: VersionInfo, models_dir: Path | None = None, *, knowledge: KnowledgeBase | None = None
    ) -> Responder:
        """Load ``info``'s generator and, when it was trained grounded, its knowledge base (``knowledge``:
        that version's already loaded KnowledgeBase to share, e.g. the one ``serve`` holds for /search)."""
        gen_dir = info.path / GENERATOR_DIR
        if not (gen_dir / GENERATOR_FILE).is_file():
            raise RegistryError(
                f"version {info.name} has no response generator",
                hint="train one: hotelbot train --model-type generator",
            )
        if knowledge is not None and knowledge.version != info.name:
            raise ValueError(f"the knowledge base of {knowledge.version} is not {info.name}'s")
        encoder = onnx_encoder = None
        from ..knowledge.kb import INDEX_FILE, KNOWLEDGE_DIR, KnowledgeBase  # kb imports numpy

        try:
            spec = GeneratorSpec.from_dict(json.loads((gen_dir / GENERATOR_FILE).read_text("utf-8")))
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelError(f"cannot read {gen_dir / GENERATOR_FILE}: {exc}") from None
        if spec.grounding_passages <= 0:
            knowledge = None
        elif knowledge is None and (info.path / KNOWLEDGE_DIR / INDEX_FILE).is_file():
            knowledge = KnowledgeBase.from_version(info, models_dir)
        if knowledge is not None:
            # The same frozen e5 embeds the KB's queries and encodes the generator's messages: when the knowledge
            # base has its torch copy loaded (HOTELBOT_RUNTIME=torch, no ONNX export), share it. Otherwise the KB
            # queries on ONNX and load_generator loads the encoder alone, memory-mapped, without a second
            # Hugging Face tokenizer (~300 MB for e5's 250k pieces).
            same = not spec.encoder.get("saved", True) and knowledge.model.fingerprint == spec.encoder.get(
                "fingerprint"
            )
            if same and knowledge.torch_embedder_loaded:
                encoder = knowledge.embedder.encoder
            elif same:  # the knowledge base's ONNX export of it, when it has one: the e5 runs once for both
                knowledge.shares_encoder = True  # fp32: the states generation was trained on
                onnx_encoder = knowledge.onnx_query_encoder
                if onnx_encoder is not None and onnx_encoder.runtime != "onnx-fp32":
                    onnx_encoder = None  # loaded as int8 before the generator: generation keeps its torch encoder
        model, tokenizer, spec, generation, vocab = load_generator(
            gen_dir, models_dir, encoder=encoder, light_tokenizer=True
        )
        return cls(model, tokenizer, spec, generation, vocab, knowledge, info.name, onnx_encoder)

    @classmethod
    def from_registry(
        cls, registry: ModelRegistry, version: str | None = None, *, verify: bool = True, models_dir: Path | None = None
    ) -> Responder:
        """``version`` None: the deployed version, else the newest (checksums checked unless ``verify`` is False)."""
        info = registry.resolve(version, verify=verify)
        return cls.from_version(info, models_dir)

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    def retrieve(self, messages: Sequence[str]) -> list[list[SearchHit]]:
        if self.knowledge is None:
            return [[] for _ in messages]
        return self.knowledge.search_many(list(messages), top_k=self.spec.grounding_passages)

    def _clean(self, messages: Sequence[str]) -> list[str]:
        return clean_messages(messages)

    def _contexts(self, hits: Sequence[Sequence[SearchHit]]) -> list[str] | None:
        if self.knowledge is None:
            return None
        return [passages_text(h, self.spec.passage_chars) for h in hits]

    def reply(
        self,
        messages: Sequence[str],
        *,
        batch_size: int = 16,
        hits: Sequence[Sequence[SearchHit]] | None = None,
        **generation_overrides: Any,
    ) -> list[dict[str, Any]]:
        """One reply per message, with the knowledge-base passages it was given as ``sources``."""
        torch = self._torch
        cleaned = self._clean(messages)
        hits = list(hits) if hits is not None else self.retrieve(cleaned)
        contexts = self._contexts(hits)
        settings = (
            GenerationSettings.from_dict({**self.generation.to_dict(), **generation_overrides})
            if generation_overrides
            else self.generation
        )
        kwargs = settings.kwargs()
        if self.spec.architecture == "encoder-decoder":
            limit = int(self.model.config.decoder.max_position_embeddings) - 1
            kwargs["max_new_tokens"] = min(kwargs["max_new_tokens"], limit)
            kwargs["min_new_tokens"] = min(kwargs["min_new_tokens"], kwargs["max_new_tokens"])
            if self.vocab is not None:
                kwargs["suppress_tokens"] = [self.vocab.unk, self.vocab.pad]
        sources = self.features.source(cleaned, contexts)
        replies: list[str] = []
        device = self.device
        with torch.inference_mode():
            for start in range(0, len(sources), batch_size):
                chunk = sources[start : start + batch_size]
                length = max(len(s["input_ids"]) for s in chunk)
                pad = self.spec.special_ids["pad"]
                ids = torch.full((len(chunk), length), pad, dtype=torch.long)
                mask = torch.zeros((len(chunk), length), dtype=torch.long)
                for i, s in enumerate(chunk):
                    n = len(s["input_ids"])
                    if self.spec.architecture == "causal":  # left padding: generation continues the prompt
                        ids[i, length - n :] = torch.tensor(s["input_ids"])
                        mask[i, length - n :] = 1
                    else:
                        ids[i, :n] = torch.tensor(s["input_ids"])
                        mask[i, :n] = 1
                if self.onnx_encoder is not None:  # the shared ONNX encoder's states; the decoder on torch
                    from transformers.modeling_outputs import BaseModelOutput  # heavy: with the generator only

                    hidden = self.onnx_encoder.hidden_from_ids(ids.numpy(), mask.numpy())
                    states = BaseModelOutput(last_hidden_state=torch.from_numpy(hidden).to(device))
                    out = self.model.generate(encoder_outputs=states, attention_mask=mask.to(device), **kwargs)
                else:
                    out = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
                if self.spec.architecture == "causal":
                    out = out[:, length:]
                replies.extend(self.features.decode(row.tolist()) for row in out)
        return [
            {
                "message": m,
                "reply": r,
                "sources": [
                    {"doc": h.chunk.doc, "heading": h.chunk.heading, "score": round(float(h.score), 6)} for h in hs
                ],
            }
            for m, r, hs in zip(messages, replies, hits)
        ]

    def score(
        self,
        messages: Sequence[str],
        replies: Sequence[str],
        *,
        batch_size: int = 16,
        hits: Sequence[Sequence[SearchHit]] | None = None,
    ) -> tuple[float, int]:
        """(summed NLL, token count) of ``replies`` given ``messages`` (teacher forcing): perplexity's parts.
        With a restricted vocabulary, reply pieces outside it count as the unknown token."""
        torch = self._torch
        cleaned = self._clean(messages)
        hits = list(hits) if hits is not None else self.retrieve(cleaned)
        sources = self.features.source(cleaned, self._contexts(hits))
        examples = [self.features.example(s, self.features.target(clean_text(r))) for s, r in zip(sources, replies)]
        total, count = 0.0, 0
        device = self.device
        with torch.inference_mode():
            for start in range(0, len(examples), batch_size):
                batch = self._collator(examples[start : start + batch_size])
                batch = {k: v.to(device) for k, v in batch.items()}
                nll, n = token_nll(self.model, batch)
                total += float(nll)
                count += int(n)
        return total, count


def relevance_embedder(
    spec: GeneratorSpec,
    knowledge: KnowledgeBase | None,
    models_dir: Path,
    *,
    frozen_encoder: Any = None,
    tokenizer: Any = None,
) -> Embedder:
    """What relevance and the retrieval baseline embed with: the knowledge base's embedding model; without
    one, the generator's base encoder (mean-pooled) for the encoder-decoder architecture (the packaged e5 by
    default), else the packaged multilingual-e5-small. ``frozen_encoder`` (+ its ``tokenizer``): an
    already loaded, UNCHANGED copy of that base encoder to reuse instead of loading it again."""
    from ..knowledge.embedding import MAX_EMBED_TOKENS, Embedder, EmbeddingModel  # imports numpy

    if knowledge is not None:
        return knowledge.embedder
    if spec.architecture == "encoder-decoder":
        record = spec.encoder
        if frozen_encoder is not None and tokenizer is not None:
            limit = min(MAX_EMBED_TOKENS, int(getattr(frozen_encoder.config, "max_position_embeddings", 512)))
            model = EmbeddingModel(
                record["spec"],
                record["location"],
                spec.query_prefix,
                spec.passage_prefix,
                "mean",
                limit,
                int(frozen_encoder.config.hidden_size),
                record["fingerprint"],
            )
            return Embedder(model, tokenizer, frozen_encoder)
        target = record.get("location") if Path(record.get("location", "")).is_dir() else record.get("spec")
        with quiet_transformers():
            return Embedder.load(cast(str, target), models_dir)  # the record's location or spec
    with quiet_transformers():
        return Embedder.load(DEFAULT_RELEVANCE_MODEL, models_dir)


def evaluate_generator(
    responder: Responder,
    validation: Sequence[ReplyPair],
    train: Sequence[ReplyPair],
    *,
    embedder: Embedder,
    batch_size: int = 16,
    samples: int = MAX_SAMPLES,
) -> dict[str, Any]:
    """Generator metrics on ``validation`` beside the retrieval-only baseline, computed in the same run.

    BLEU: sacrebleu corpus BLEU (0..100). ROUGE-L: mean F1 (0..1). Perplexity: exp of the mean token NLL
    of the reference replies. Relevance: mean cosine of the embeddings (``embedder``, kind "query") of the
    generated and the reference reply. Baseline: the reply of the training message nearest to the
    validation message by embedding cosine."""
    import numpy as np  # heavy: imported when a generator is evaluated

    if not validation or not train:
        raise DataError("evaluation needs non-empty training and validation pairs")
    messages = [p.message for p in validation]
    references = [p.reply for p in validation]
    start = time.monotonic()
    hits = responder.retrieve(messages)
    generated = responder.reply(messages, batch_size=batch_size, hits=hits)
    generation_seconds = time.monotonic() - start
    hypotheses = [g["reply"] for g in generated]
    nll, tokens = responder.score(messages, references, batch_size=batch_size, hits=hits)

    train_vecs = embedder.embed([p.message for p in train], kind="query")
    val_vecs = embedder.embed(messages, kind="query")
    nearest = np.argmax(val_vecs @ train_vecs.T, axis=1)
    baseline = [train[int(i)].reply for i in nearest]
    ref_vecs = embedder.embed(references, kind="query")
    gen_vecs = embedder.embed([h if h else "-" for h in hypotheses], kind="query")
    base_vecs = embedder.embed(baseline, kind="query")

    def block(outputs: Sequence[str], vecs: Any) -> dict[str, float]:
        cos = np.sum(vecs * ref_vecs, axis=1)
        return {
            "bleu": round(corpus_bleu(outputs, references), 4),
            "rouge_l": round(corpus_rouge_l(outputs, references), 6),
            "relevance": round(float(np.mean(cos)), 6),
            "exact_match": round(sum(o == r for o, r in zip(outputs, references)) / len(references), 6),
        }

    gen_block = block(hypotheses, gen_vecs)
    gen_block.update(
        {
            "perplexity": round(perplexity(nll, tokens), 4),
            "reference_tokens": tokens,
            "empty_replies": sum(not h for h in hypotheses),
            "mean_reply_chars": round(sum(map(len, hypotheses)) / len(hypotheses), 1),
            "seconds_per_reply": round(generation_seconds / len(hypotheses), 4),
        }
    )
    if responder.vocab is not None:
        ref_ids = [responder.tokenizer(r, add_special_tokens=False)["input_ids"] for r in references]
        total = sum(len(ids) for ids in ref_ids)
        gen_block["reference_oov_rate"] = round(
            sum(1 for ids in ref_ids for i in ids if not responder.vocab.covers([i])) / max(total, 1), 6
        )
    grounding = None
    if responder.knowledge is not None:
        with_source = [(p, h) for p, h in zip(validation, hits) if p.source]
        grounding = {
            "passages": responder.spec.grounding_passages,
            "source_hit_rate": round(
                sum(any(x.chunk.doc == p.source for x in h) for p, h in with_source) / max(len(with_source), 1), 6
            ),
            "pairs_with_source": len(with_source),
        }
    return {
        "num_examples": len(validation),
        "generator": gen_block,
        "retrieval_baseline": block(baseline, base_vecs),
        "bleu_signature": bleu_signature(),
        "relevance_model": embedder.model.spec,
        "grounding": grounding,
        "generation": responder.generation.to_dict(),
        "samples": [
            {"message": m, "reference": r, "generated": g["reply"], "baseline": b, "sources": g["sources"]}
            for m, r, g, b in list(zip(messages, references, generated, baseline))[:samples]
        ],
    }


def evaluate_version(
    info: VersionInfo, *, models_dir: Path | None = None, data: Path | None = None, limit: int | None = None
) -> dict[str, Any]:
    """Re-score a version's generator on its stored validation split (or ``data``: a prepared directory
    or a .jsonl file, all of which is scored) against its stored training split. For ``hotelbot validate``."""
    gen_dir = info.path / GENERATOR_DIR
    responder = Responder.from_version(info, models_dir)
    train = read_pairs_jsonl(gen_dir / DATA_SUBDIR / TRAIN_FILE)
    if data is None:
        validation = read_pairs_jsonl(gen_dir / DATA_SUBDIR / VALIDATION_FILE)
    elif Path(data).is_dir():
        validation = read_prepared_replies(Path(data)).validation
    else:
        validation, _ = read_reply_file(Path(data))
    if limit:
        validation = validation[:limit]
    if models_dir is None:
        models_dir = load_settings().paths.models_dir
    embedder = relevance_embedder(responder.spec, responder.knowledge, Path(models_dir))
    return {"version": info.name, **evaluate_generator(responder, validation, train, embedder=embedder)}
