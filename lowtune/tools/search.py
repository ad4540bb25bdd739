"""The search tool: BM25 over a local corpus of passages (no network).

`Search(passages)("capital of France")` returns the best-matching passage (cut to `max_chars`), or
None when no passage shares a term with the query. Scoring is Okapi BM25 (Robertson & Zaragoza 2009,
"The Probabilistic Relevance Framework: BM25 and Beyond", eq. 3.15 with the non-negative idf
log(1 + (N - n + 0.5) / (n + 0.5)); k1 = 1.2, b = 0.75). A corpus is a list of strings, a text file
(one passage per line) or a JSONL file with a `text` field; the builtin corpus is a small demo.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

from lowtune.errors import LowtuneError

MAX_QUERY = 300
_TOKEN = re.compile(r"[a-z0-9]+")

BUILTIN_CORPUS = [
    "Paris is the capital and largest city of France, on the river Seine.",
    "The Pacific Ocean is the largest and deepest of Earth's oceans.",
    "Mount Everest, 8,849 metres above sea level, is Earth's highest mountain.",
    "Water boils at 100 degrees Celsius at sea level.",
    "The Moon orbits the Earth at an average distance of 384,400 kilometres.",
    "A marathon is a long-distance foot race of 42.195 kilometres.",
    "The speed of light in vacuum is 299,792,458 metres per second.",
    "Tokyo is the capital of Japan and one of the most populous cities in the world.",
    "The Nile is a river in north-eastern Africa, about 6,650 kilometres long.",
    "A leap year has 366 days; February then has 29 days.",
    "Photosynthesis turns carbon dioxide and water into glucose and oxygen using light.",
    "The human heart has four chambers: two atria and two ventricles.",
]


def _terms(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


class Search:
    name = "WikiSearch"
    description = "Searches a local corpus and returns the best-matching passage."
    examples = [
        ("The Nile is about 6,650 km long.",
         "The Nile is about [WikiSearch(Nile length) -> The Nile is a river in north-eastern Africa, about "
         "6,650 kilometres long.] 6,650 km long."),
    ]  # fmt: skip

    def __init__(self, corpus: list[str] | str | Path | None = None, k1: float = 1.2, b: float = 0.75,
                 max_chars: int = 200):  # fmt: skip
        self.passages = load_corpus(corpus) if corpus is not None else list(BUILTIN_CORPUS)
        self.k1, self.b, self.max_chars = k1, b, max_chars
        self.docs = [Counter(_terms(p)) for p in self.passages]
        self.lengths = [sum(d.values()) for d in self.docs]
        self.mean_length = sum(self.lengths) / max(len(self.lengths), 1)
        frequency = Counter(t for d in self.docs for t in d)
        n = len(self.docs)
        self.idf = {t: math.log(1 + (n - f + 0.5) / (f + 0.5)) for t, f in frequency.items()}

    def scores(self, query: str) -> list[float]:
        terms = [t for t in _terms(query) if t in self.idf]
        out = []
        for doc, length in zip(self.docs, self.lengths, strict=True):
            norm = self.k1 * (1 - self.b + self.b * length / (self.mean_length or 1))
            out.append(sum(self.idf[t] * doc[t] * (self.k1 + 1) / (doc[t] + norm) for t in terms if t in doc))
        return out

    def __call__(self, query: str) -> str | None:
        if not isinstance(query, str) or len(query) > MAX_QUERY or not self.passages:
            return None
        scores = self.scores(query)
        best = max(range(len(scores)), key=scores.__getitem__)
        if scores[best] <= 0:
            return None
        passage = self.passages[best]
        return passage if len(passage) <= self.max_chars else passage[: self.max_chars].rsplit(" ", 1)[0] + "…"


def load_corpus(corpus: list[str] | str | Path) -> list[str]:
    """Passages from a list, a .txt file (one per non-empty line) or a .jsonl file of {"text": ...} rows."""
    if isinstance(corpus, list):
        return [str(p) for p in corpus if str(p).strip()]
    path = Path(corpus)
    if not path.is_file():
        raise LowtuneError(f"search corpus {path} not found; give a .txt (one passage per line) or .jsonl file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise LowtuneError(f"search corpus {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if path.suffix != ".jsonl":
        return [line.strip() for line in lines if line.strip()]
    passages = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise LowtuneError(f"{path}:{number}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise LowtuneError(f'{path}:{number}: each row needs a "text" string')
        passages.append(row["text"])
    return passages
