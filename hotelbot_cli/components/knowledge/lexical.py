"""Lexical retrieval: Okapi BM25 over pre-tokenized texts, and the tokenizer the knowledge base's BM25 baseline
uses (Snowball's Spanish stemmer, imported by :func:`bm25_tokens` only). numpy only at import (no encoder), so
the reply pipeline can use BM25 without loading the knowledge base's models."""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from typing import Sequence

import numpy as np

_STOPWORDS = frozenset(
    """
a al algo algun alguna algunas alguno algunos ante antes como con contra cual cuales cuando de del desde donde
durante e el ella ellas ellos en entre era es esa esas ese eso esos esta estas este esto estos fue ha hay la las
le les lo los mas me mi mis mucho muy nada ni no nos o os otra otro para pero poco por porque que quien se sea
ser si sin sobre son su sus tambien te tiene tu tus un una uno unos unas y ya yo usted ustedes vosotros
""".split()
)


def _fold(text: str) -> str:
    return "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch))


def bm25_tokens(text: str) -> list[str]:
    """Lowercase words of 2+ characters, Spanish stopwords out, each reduced by the Snowball Spanish stemmer
    (habitación, habitaciones -> habit; hoteles -> hotel), accents folded after stemming (Snowball reads them)."""
    from snowballstemmer import stemmer  # pure Python; only the knowledge base's BM25 baseline tokenizes this way

    spanish = stemmer("spanish")
    tokens = []
    for word in re.findall(r"\w+", unicodedata.normalize("NFC", text.casefold())):
        if len(word) < 2 or _fold(word) in _STOPWORDS:
            continue
        tokens.append(_fold(spanish.stemWord(word)))
    return tokens


class BM25:
    """Okapi BM25 (k1=1.5, b=0.75, the non-negative idf of Lucene) over pre-tokenized documents."""

    def __init__(self, documents: Sequence[Sequence[str]], k1: float = 1.5, b: float = 0.75) -> None:
        self.k1, self.b = k1, b
        self.freqs = [Counter(doc) for doc in documents]
        self.lengths = np.array([len(doc) for doc in documents], dtype=np.float64)
        self.avg_length = float(self.lengths.mean()) if len(documents) else 0.0
        df = Counter(term for freq in self.freqs for term in freq)
        n = len(documents)
        self.idf = {term: math.log(1 + (n - f + 0.5) / (f + 0.5)) for term, f in df.items()}

    def scores(self, query: Sequence[str]) -> np.ndarray:
        out = np.zeros(len(self.freqs), dtype=np.float64)
        norm = self.k1 * (1 - self.b + self.b * self.lengths / max(self.avg_length, 1e-9))
        for term in set(query):
            idf = self.idf.get(term)
            if idf is None:
                continue
            tf = np.array([freq.get(term, 0) for freq in self.freqs], dtype=np.float64)
            out += idf * tf * (self.k1 + 1) / (tf + norm)
        return out

    def top_k(self, query: Sequence[str], k: int) -> list[tuple[int, float]]:
        scores = self.scores(query)
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]
        return [(i, float(scores[i])) for i in order]


__all__ = ["BM25", "bm25_tokens"]
