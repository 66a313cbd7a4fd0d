"""Text metrics of generated replies: ROUGE-L (our own Unicode-aware tokens), sacrebleu corpus BLEU and
perplexity."""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Sequence

BLEU_TOKENIZE = "intl"  # Unicode-aware punctuation splitting (¿ ¡ « ») for Spanish

_WORD_RE = re.compile(r"\w+", re.UNICODE)


def rouge_tokens(text: str) -> list[str]:
    """Lowercased Unicode words (accents and ñ kept, punctuation dropped). rouge-score's tokenizer keeps
    only [a-z0-9], which would split "habitación" into "habitaci" + "n": we use our own."""
    return _WORD_RE.findall(unicodedata.normalize("NFC", text).casefold())


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    if not a or not b:
        return 0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, 1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(hypothesis: str, reference: str) -> dict[str, float]:
    """ROUGE-L of one pair: LCS-based precision, recall and F1 (beta = 1, as rouge-score reports)."""
    hyp, ref = rouge_tokens(hypothesis), rouge_tokens(reference)
    lcs = _lcs_length(hyp, ref)
    if lcs == 0:
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    p, r = lcs / len(hyp), lcs / len(ref)
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r)}


def corpus_rouge_l(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F1 over the pairs (0..1)."""
    if len(hypotheses) != len(references):
        raise ValueError("hypotheses and references differ in length")
    if not hypotheses:
        return 0.0
    return sum(rouge_l(h, r)["f1"] for h, r in zip(hypotheses, references)) / len(hypotheses)


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu corpus BLEU (0..100), one reference per hypothesis, ``intl`` tokenization."""
    import sacrebleu  # heavy: imported when BLEU is computed

    if len(hypotheses) != len(references):
        raise ValueError("hypotheses and references differ in length")
    if not hypotheses:
        return 0.0
    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)], tokenize=BLEU_TOKENIZE).score)


def bleu_signature() -> str:
    import sacrebleu  # heavy: imported when BLEU is computed

    metric = sacrebleu.BLEU(tokenize=BLEU_TOKENIZE)
    metric.corpus_score(["a"], [["a"]])  # the signature includes the reference count, known after scoring
    return str(metric.get_signature())


def perplexity(nll_sum: float, tokens: int) -> float:
    """exp(mean token NLL); inf for no tokens."""
    return math.exp(nll_sum / tokens) if tokens else float("inf")
