"""Model inputs, the same for training, perplexity and generation: (message, passages, reply) -> token ids
for one architecture (:class:`Features`), batches (:class:`Collator`) and the token NLL of a batch.

**Retrieval grounding**: when the source version has a knowledge base, the top ``grounding_passages``
chunks for the message are the encoder's second segment (``tokenizer(message, passages)``; the longer
segment, in practice the passages, is truncated first): for e5, ``<s> query: MESSAGE </s></s> passage: HEADING: TEXT ... </s>``. Training uses
the same retrieval, so the generator learns to use the passages; the reply cites them as
``sources: [{"doc", "heading", "score"}]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ...data import clean_text
from ...errors import ModelError
from .model import GeneratorSpec, VocabMap

if TYPE_CHECKING:
    from ..knowledge.kb import SearchHit

IGNORE = -100  # the label of positions without a loss


def passages_text(hits: Sequence[SearchHit], passage_chars: int) -> str:
    """The encoder's second segment: each passage as "HEADING: TEXT", cut to ``passage_chars``."""
    parts = []
    for hit in hits:
        c = hit.chunk
        text = (f"{c.heading}: {c.text}" if c.heading else c.text).replace("\n", " ")
        parts.append(text[:passage_chars].rstrip())
    return " ".join(parts)


class Features:
    """Turns (message, passages, reply) into model inputs for one architecture; shared by training,
    perplexity and generation so all three see exactly the same inputs."""

    def __init__(self, tokenizer: Any, spec: GeneratorSpec, vocab: VocabMap | None) -> None:
        self.tokenizer = tokenizer
        self.spec = spec
        self.vocab = vocab
        self.ids = spec.special_ids

    def source(self, messages: Sequence[str], contexts: Sequence[str] | None) -> list[dict[str, list[int]]]:
        """Encoder inputs (encoder-decoder / seq2seq) or the prompt (causal), unpadded."""
        tok, spec = self.tokenizer, self.spec
        out = []
        for i, message in enumerate(messages):
            context = contexts[i] if contexts else ""
            if spec.architecture == "causal":  # [bos] Contexto: PASSAGES \n Cliente: MESSAGE \n Respuesta:
                head = [tok.bos_token_id] if tok.bos_token_id is not None else []
                tail = list(tok(f"Cliente: {message}\nRespuesta:", add_special_tokens=False)["input_ids"])
                tail = tail[-(spec.max_source_length - len(head)) :]  # an over-long message loses its start
                budget = spec.max_source_length - len(head) - len(tail)
                ctx = list(tok(f"Contexto: {context}\n", add_special_tokens=False)["input_ids"]) if context else []
                out.append({"input_ids": head + ctx[: max(budget, 0)] + tail})
            elif context:
                enc = tok(
                    spec.query_prefix + message,
                    spec.passage_prefix + context,
                    truncation="longest_first",
                    max_length=spec.max_source_length,
                )
                out.append({"input_ids": list(enc["input_ids"])})
            else:
                enc = tok(spec.query_prefix + message, truncation=True, max_length=spec.max_source_length)
                out.append({"input_ids": list(enc["input_ids"])})
        return out

    def target(self, reply: str) -> list[int]:
        """The reply's token ids + eos, in the decoder's id space (causal: tokenizer ids)."""
        tok, spec = self.tokenizer, self.spec
        text = (" " + reply) if spec.architecture == "causal" else reply
        ids = tok(text, add_special_tokens=False, truncation=True, max_length=spec.max_target_length - 1)["input_ids"]
        ids = list(ids) + [self.ids["eos"]]
        return self.vocab.to_restricted(ids) if self.vocab is not None else ids

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids]
        if self.vocab is not None:
            ids = self.vocab.to_full(ids)
        return clean_text(self.tokenizer.decode(ids, skip_special_tokens=True))

    def example(self, source: dict[str, list[int]], target: list[int]) -> dict[str, list[int]]:
        """One training/scoring example: causal packs prompt + reply with the prompt masked."""
        if self.spec.architecture == "causal":
            ids = source["input_ids"] + target
            labels = [IGNORE] * (len(source["input_ids"]) - 1) + target + [IGNORE]
            return {"input_ids": ids, "labels": labels[: len(ids)]}
        return {**source, "labels": target}


class Collator:
    """Pads a batch; builds decoder inputs (decoder start + target[:-1]) for encoder-decoder models and
    feeds cached encoder states when the examples carry them."""

    def __init__(self, architecture: str, pad_id: int, decoder_pad: int, decoder_start: int) -> None:
        self.architecture = architecture
        self.pad_id = pad_id
        self.decoder_pad = decoder_pad
        self.decoder_start = decoder_start

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        import torch  # heavy: imported on use

        batch: dict[str, Any] = {}
        if "encoder_hidden" in items[0]:
            length = max(int(x["encoder_hidden"].shape[0]) for x in items)
            dim = int(items[0]["encoder_hidden"].shape[1])
            hidden = torch.zeros(len(items), length, dim, dtype=items[0]["encoder_hidden"].dtype)
            mask = torch.zeros(len(items), length, dtype=torch.long)
            for i, x in enumerate(items):
                n = int(x["encoder_hidden"].shape[0])
                hidden[i, :n] = x["encoder_hidden"]
                mask[i, :n] = 1
            batch["encoder_outputs"] = (hidden,)
            batch["attention_mask"] = mask
        else:
            length = max(len(x["input_ids"]) for x in items)
            ids = torch.full((len(items), length), self.pad_id, dtype=torch.long)
            mask = torch.zeros(len(items), length, dtype=torch.long)
            for i, x in enumerate(items):
                ids[i, : len(x["input_ids"])] = torch.tensor(x["input_ids"])
                mask[i, : len(x["input_ids"])] = 1
            batch["input_ids"] = ids
            batch["attention_mask"] = mask
        length = max(len(x["labels"]) for x in items)
        labels = torch.full((len(items), length), IGNORE, dtype=torch.long)
        for i, x in enumerate(items):
            labels[i, : len(x["labels"])] = torch.tensor(x["labels"])
        batch["labels"] = labels
        if self.architecture != "causal":
            dec = torch.full_like(labels, self.decoder_pad)
            dec[:, 0] = self.decoder_start
            shifted = labels[:, :-1].clone()
            shifted[shifted == IGNORE] = self.decoder_pad
            dec[:, 1:] = shifted
            batch["decoder_input_ids"] = dec
            batch["decoder_attention_mask"] = (
                torch.arange(length)[None, :] <= (labels != IGNORE).sum(dim=1, keepdim=True) - 1
            ).long()
        return batch


def token_nll(model: Any, batch: Mapping[str, Any]) -> tuple[Any, Any]:
    """(summed NLL, token count) of the batch's labels; labels are aligned with the logits (causal ones
    are shifted by :meth:`Features.example`)."""
    import torch  # heavy: imported on use

    inputs = {k: v for k, v in batch.items() if k != "labels"}
    labels = batch["labels"]
    logits = model(**inputs).logits
    if logits.shape[1] != labels.shape[1]:
        raise ModelError(f"logits ({logits.shape[1]}) and labels ({labels.shape[1]}) differ in length")
    nll = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
    return nll, (labels != IGNORE).sum()
