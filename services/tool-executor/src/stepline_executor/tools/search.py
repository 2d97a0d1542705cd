"""`search_documents`: BM25 ranking over a folder of text/markdown files, with snippets."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from stepline_executor.model import CallContext, ToolOutput, ToolSpec
from stepline_executor.tools.base import ModelArguments

__all__ = ["Bm25Index", "Document", "Hit", "SearchArguments", "SearchDocuments", "load_folder"]

_TOKEN = re.compile(r"[a-z0-9]+")
_SUFFIXES = (".md", ".txt")
_SNIPPET_CHARS = 240


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens."""
    return _TOKEN.findall(text.lower())


@dataclass(frozen=True, slots=True)
class Document:
    """One searchable document; `source_id` is its path relative to the folder."""

    source_id: str
    title: str
    text: str


@dataclass(frozen=True, slots=True)
class Hit:
    """A ranked result."""

    source_id: str
    title: str
    score: float
    snippet: str


class Bm25Index:
    """Okapi BM25 (k1=1.5, b=0.75) over documents, built once in memory."""

    def __init__(self, documents: Sequence[Document], k1: float = 1.5, b: float = 0.75) -> None:
        self.documents = list(documents)
        self._k1, self._b = k1, b
        self._terms = [Counter(tokenize(f"{d.title}\n{d.text}")) for d in self.documents]
        self._lengths = [sum(t.values()) for t in self._terms]
        self._avg = (sum(self._lengths) / len(self._lengths)) if self._lengths else 0.0
        frequency: Counter[str] = Counter()
        for terms in self._terms:
            frequency.update(terms.keys())
        n = len(self.documents)
        self._idf = {t: math.log(1 + (n - f + 0.5) / (f + 0.5)) for t, f in frequency.items()}

    def search(self, query: str, top_k: int = 5) -> list[Hit]:
        """The best `top_k` documents for `query` (documents scoring zero are left out)."""
        words = list(dict.fromkeys(tokenize(query)))
        scored = []
        for i, terms in enumerate(self._terms):
            score = 0.0
            norm = self._k1 * (1 - self._b + self._b * self._lengths[i] / (self._avg or 1))
            for word in words:
                tf = terms.get(word, 0)
                if tf:
                    score += self._idf[word] * tf * (self._k1 + 1) / (tf + norm)
            if score > 0:
                scored.append((score, i))
        scored.sort(key=lambda pair: (-pair[0], self.documents[pair[1]].source_id))
        return [
            Hit(
                self.documents[i].source_id,
                self.documents[i].title,
                round(score, 4),
                snippet(self.documents[i].text, words),
            )
            for score, i in scored[:top_k]
        ]


def snippet(text: str, words: Sequence[str], width: int = _SNIPPET_CHARS) -> str:
    """The window of `text` of about `width` characters holding the most query words."""
    flat = " ".join(text.split())
    if len(flat) <= width:
        return flat
    wanted = set(words)
    positions = [m.start() for m in _TOKEN.finditer(flat.lower()) if m.group() in wanted]
    if not positions:
        return flat[:width].rstrip() + "…"
    best_start, best_count = positions[0], 0
    for start in positions:
        count = sum(1 for p in positions if start <= p < start + width)
        if count > best_count:
            best_start, best_count = start, count
    begin = max(0, best_start - width // 4)
    end = min(len(flat), begin + width)
    prefix = "…" if begin > 0 else ""
    suffix = "…" if end < len(flat) else ""
    return f"{prefix}{flat[begin:end].strip()}{suffix}"


def load_folder(folder: Path) -> list[Document]:
    """Every .md/.txt file under `folder`; the title is the first non-empty line."""
    documents = []
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in _SUFFIXES or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        first = next((line for line in text.splitlines() if line.strip()), path.stem)
        documents.append(Document(path.relative_to(folder).as_posix(), first.lstrip("# "), text))
    return documents


class SearchArguments(BaseModel):
    """Arguments of `search_documents`."""

    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=500, description="What to look for, in words.")
    top_k: int = Field(default=5, ge=1, le=20, description="How many documents to return.")


@dataclass(frozen=True)
class SearchDocuments:
    """The `search_documents` tool."""

    spec: ToolSpec
    index: Bm25Index
    arguments: ModelArguments[SearchArguments]

    @classmethod
    def build(cls, folder: Path, **limits: Any) -> SearchDocuments:
        """Index `folder` and describe the tool."""
        arguments = ModelArguments(SearchArguments)
        index = Bm25Index(load_folder(folder))
        spec = ToolSpec(
            name="search_documents",
            description="Search the knowledge base (past support tickets and notes) by keywords."
            " Returns the best matching documents with a snippet and a source_id to cite.",
            parameters=arguments.schema,
            idempotent=True,
            **limits,
        )
        return cls(spec, index, arguments)

    def parse(self, arguments: dict[str, Any]) -> SearchArguments:
        """Validated arguments."""
        return self.arguments.parse(arguments)

    async def run(self, parsed: SearchArguments, context: CallContext) -> ToolOutput:
        """Rank documents for the query."""
        hits = self.index.search(parsed.query, parsed.top_k)
        return ToolOutput(
            json.dumps(
                {
                    "query": parsed.query,
                    "results": [
                        {
                            "source_id": h.source_id,
                            "title": h.title,
                            "score": h.score,
                            "snippet": h.snippet,
                        }
                        for h in hits
                    ],
                },
                ensure_ascii=False,
            )
        )
