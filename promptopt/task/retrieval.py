"""Demonstrations retrieved for each input: a retrieval policy and the train-split index it queries.

KATE (Liu et al. 2022, "What Makes Good In-Context Examples for GPT-3?") picks each input's demos as its
nearest train examples; DSPy's KNNFewShot and LangChain's similarity / MMR example selectors do the same.
A `RetrievalPolicy` on a candidate replaces its fixed demo ids: k, the embedding, maximal marginal
relevance (MMR, Carbonell & Goldstein 1998: lambda 1 = nearest only, lower = more diverse), label balance
and order (nearest last, next to the query, as KATE's reversed order; or nearest first). `shared` puts a
fixed set of train demos first, the same for every input, with the k retrieved ones after them: the
backend computes the instruction and the shared demos once for all inputs (a common token prefix), so such
a policy trades some of retrieval's fit to the input for the speed of a fixed set.

Embeddings:
- "bm25": BM25 over word tokens (rank_bm25, the `retrieval` extra); no model, works with any target.
- "hidden": the target model's own last hidden states, mean-pooled (local backends that have `embed`).
- "st:<model>": a sentence-transformers model the user has installed.

Only the train split is indexed (the test split never enters it), once per run; dense vectors are cached
on disk beside the response cache, keyed by the embedder's fingerprint and the train texts. A policy's
`exclude` leaves some train ids out (the k-fold final pick refits a candidate on a fold's training part):
BM25 statistics over the rest, the dense vectors reused.
Queries are embedded in one batch per scoring call. Only `Example.input` is embedded: extra fields
(a worked reference solution, say) may hold the answer.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, cast

from promptopt.errors import ConfigError
from promptopt.types import Example

ORDERS = ("nearest_last", "nearest_first")
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class RetrievalPolicy:
    """How a candidate picks its demos for each input."""

    k: int = 4
    embedding: str = "bm25"
    mmr: float = 1.0  # MMR lambda: 1 = by relevance only; 0.5 weighs relevance and diversity alike
    balanced: bool = False  # round-robin over labels (choose tasks), the nearest of each label first
    order: Literal["nearest_last", "nearest_first"] = "nearest_last"
    shared: tuple[str, ...] = ()  # train ids every input gets first, in this order; never retrieved again
    # Train ids left out of the index: the k-fold final pick (measure/final_pick.py) refits a retrieval
    # candidate on each fold's training part by leaving the held-out fold's train examples out.
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ConfigError(f"retrieval policy: k must be at least 1, not {self.k}")
        if not 0.0 <= self.mmr <= 1.0:
            raise ConfigError(f"retrieval policy: the MMR lambda must be within 0..1, not {self.mmr}")
        if self.order not in ORDERS:
            raise ConfigError(f"retrieval policy: order must be one of {', '.join(ORDERS)}, not {self.order!r}")
        if len(set(self.shared)) != len(self.shared):
            raise ConfigError(f"retrieval policy: a shared demo is repeated in {list(self.shared)}")
        if not (self.embedding in ("bm25", "hidden") or (self.embedding.startswith("st:") and len(self.embedding) > 3)):
            raise ConfigError(f"retrieval policy: unknown embedding {self.embedding!r}; "
                              "use bm25, hidden, or st:<sentence-transformers model>")

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"k": self.k, "embedding": self.embedding, "mmr": self.mmr, "balanced": self.balanced,
                             "order": self.order}
        if self.shared:  # these two only when set, so the ids of candidates without them stay as they were
            d["shared"] = list(self.shared)
        if self.exclude:
            d["exclude"] = list(self.exclude)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "RetrievalPolicy":
        return cls(int(d["k"]), str(d["embedding"]), float(d["mmr"]), bool(d["balanced"]), d["order"],
                   tuple(str(i) for i in d.get("shared", ())), tuple(str(i) for i in d.get("exclude", ())))


def _tokens(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def check_embedding(name: str, target: Any = None) -> None:
    """One line before any model call when an embedding cannot be used here."""
    if name == "bm25":
        if importlib.util.find_spec("rank_bm25") is None:
            raise ConfigError("retrieval embedding bm25 needs rank_bm25: pip install 'promptopt[retrieval]'")
    elif name == "hidden":
        inner = getattr(target, "inner", target)
        if target is not None and not callable(getattr(inner, "embed", None)):
            raise ConfigError("retrieval embedding 'hidden' needs a local target model (hf) to read hidden states "
                              "from; use bm25 with this target")
    elif name.startswith("st:"):
        if importlib.util.find_spec("sentence_transformers") is None:
            raise ConfigError(f"retrieval embedding {name!r} needs sentence-transformers, which is not installed: "
                              "pip install sentence-transformers (or use bm25)")
    else:
        RetrievalPolicy(embedding=name)  # raises the one-line "unknown embedding"


def check_policy(policy: RetrievalPolicy, train: Sequence[Example], target: Any = None, where: str = "") -> None:
    """Refuse a policy the task or target cannot serve, before any model call."""
    who = f"{where}: " if where else ""
    if not train:
        raise ConfigError(f"{who}a retrieval policy needs a train split to retrieve demos from, and this task has none")
    left = set(policy.exclude)
    ids = {ex.id for ex in train}
    unknown = [i for i in policy.shared if i not in ids or i in left]
    if unknown:
        raise ConfigError(f"{who}shared demo {unknown[0]!r} is not in the train split"
                          f"{' (or is one of its excluded ids)' if unknown[0] in left else ''}")
    n = sum(1 for ex in train if ex.id not in left) - len(policy.shared)
    if policy.k > n:
        raise ConfigError(f"{who}retrieval k={policy.k} is larger than the train split ({n} examples"
                          f"{' outside its excluded ids' if left else ''}{' and shared demos' if policy.shared else ''})")
    check_embedding(policy.embedding, target)


class _Index:
    """Relevance of train examples to queries, and similarity among train examples, both roughly in [0, 1]."""

    def relevance(self, queries: Sequence[str]) -> Any:
        raise NotImplementedError

    pairwise: Any


class _BM25Index(_Index):
    def __init__(self, texts: Sequence[str]):
        import numpy as np
        from rank_bm25 import BM25Okapi
        docs = [_tokens(t) or ["\u0000"] for t in texts]  # BM25Okapi divides by the mean length
        self.bm25 = BM25Okapi(docs)
        # Each train text as a query against the others, scaled by its score against itself, then symmetrized.
        raw = np.array([self.bm25.get_scores(d) for d in docs], dtype=float)
        diag = np.maximum(np.diag(raw).copy(), 1e-9)
        scaled = raw / diag[:, None]
        self.pairwise = np.clip((scaled + scaled.T) / 2, 0.0, 1.0)

    def relevance(self, queries: Sequence[str]) -> Any:
        import numpy as np
        rows = np.array([self.bm25.get_scores(_tokens(q)) for q in queries], dtype=float)
        top = np.maximum(rows.max(axis=1, keepdims=True), 1e-9)
        return np.clip(rows / top, 0.0, 1.0)


class _DenseIndex(_Index):
    def __init__(self, vectors: Any, embed: Any, queries: dict[str, Any] | None = None):
        self.vectors = _unit(vectors)
        self.embed = embed
        self.pairwise = self.vectors @ self.vectors.T
        # Every candidate scores the same dev inputs: embed each once (shared with the indexes of subsets).
        self._queries: dict[str, Any] = {} if queries is None else queries

    def relevance(self, queries: Sequence[str]) -> Any:
        import numpy as np
        new = list(dict.fromkeys(q for q in queries if q not in self._queries))
        if new:
            self._queries.update(zip(new, _unit(self.embed(new))))
        return np.stack([self._queries[q] for q in queries]) @ self.vectors.T


def _unit(vectors: Any) -> Any:
    import numpy as np
    v = np.asarray(vectors, dtype=np.float32)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-9)


class Retriever:
    """Retrieves demos from the train split for any query example. Indexes are built on first use."""

    def __init__(self, train: Sequence[Example], target: Any = None, cache_dir: Path | None = None):
        self.train = list(train)
        self.target = target
        self.cache_dir = cache_dir
        self._indexes: dict[str, _Index] = {}
        self._pos = {ex.id: i for i, ex in enumerate(self.train)}
        self.embedded = 0  # train texts embedded by a model in this run (0 when served from the disk cache)
        self._without: dict[tuple[str, ...], Retriever] = {}  # a policy's `exclude`: the train split less those ids
        self._parent: Retriever | None = None

    def _embedder(self, name: str) -> tuple[Any, str]:
        """A batch text -> vectors function and its fingerprint."""
        check_embedding(name, self.target)
        if name == "hidden":
            inner = getattr(self.target, "inner", self.target)
            return inner.embed, f"hidden:{inner.fingerprint()}"
        from sentence_transformers import SentenceTransformer
        try:
            model = SentenceTransformer(name[3:])
        except (OSError, ValueError) as e:  # not on disk and the hub unreachable, or not a model
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ConfigError(f"retrieval embedding {name!r}: cannot load the model ({first})") from e
        return (lambda texts: model.encode(list(texts), batch_size=32, show_progress_bar=False)), name

    def without(self, ids: Sequence[str]) -> "Retriever":
        """This train split less `ids`, indexed as if they had never been there (BM25 statistics over the
        rest; dense vectors are the rows of this index, so nothing is embedded again)."""
        key = tuple(sorted(set(ids)))
        if not key:
            return self
        if key not in self._without:
            left = set(key)
            child = Retriever([ex for ex in self.train if ex.id not in left], self.target, self.cache_dir)
            child._parent = self
            self._without[key] = child
        return self._without[key]

    def index(self, name: str) -> _Index:
        if name not in self._indexes:
            texts = [ex.input for ex in self.train]
            if self._parent is not None and name != "bm25":
                whole = cast(_DenseIndex, self._parent.index(name))  # every index but bm25 is dense
                rows = [self._parent._pos[ex.id] for ex in self.train]
                self._indexes[name] = _DenseIndex(whole.vectors[rows], whole.embed, whole._queries)
            elif name == "bm25":
                check_embedding(name)
                self._indexes[name] = _BM25Index(texts)
            else:
                embed, fingerprint = self._embedder(name)
                self._indexes[name] = _DenseIndex(self._train_vectors(texts, embed, fingerprint), embed)
        return self._indexes[name]

    def _train_vectors(self, texts: list[str], embed: Any, fingerprint: str) -> Any:
        import numpy as np
        key = hashlib.sha256(json.dumps([fingerprint, texts], ensure_ascii=False).encode("utf-8")).hexdigest()[:24]
        path = self.cache_dir / f"{key}.npy" if self.cache_dir is not None else None
        if path is not None and path.is_file():
            try:
                vectors = np.load(path, allow_pickle=False)
                if vectors.shape[0] == len(texts):
                    return vectors
            except (OSError, ValueError):
                pass  # a damaged cache file: embed again and write it anew
        vectors = np.asarray(embed(texts), dtype=np.float32)
        self.embedded += len(texts)
        if path is not None:
            _save_atomically(path, vectors)
        return vectors

    def retrieve(self, policy: RetrievalPolicy, queries: Sequence[Example]) -> list[tuple[str, ...]]:
        """Each query's demo ids, in prompt order: the shared ones, then the retrieved ones. A query that is
        itself a train example never gets itself."""
        if not queries:
            return []
        if policy.exclude:
            return self.without(policy.exclude).retrieve(replace(policy, exclude=()), queries)
        index = self.index(policy.embedding)
        rel = index.relevance([q.input for q in queries])
        labels = [ex.label for ex in self.train]
        balanced = policy.balanced and all(label is not None for label in labels)
        shared = [self._pos[i] for i in policy.shared]
        out = []
        for row, q in zip(rel, queries):
            own = self._pos.get(q.id)
            picked = mmr_select(row, index.pairwise, policy.k, policy.mmr, labels if balanced else None,
                                exclude=shared if own is None else [*shared, own])
            ids = [self.train[i].id for i in picked]
            out.append(policy.shared + (tuple(reversed(ids)) if policy.order == "nearest_last" else tuple(ids)))
        return out


def mmr_select(relevance: Any, pairwise: Any, k: int, lam: float, labels: Sequence[Any] | None = None,
               exclude: Sequence[int] = ()) -> list[int]:
    """k indexes, most relevant first, by maximal marginal relevance:
    argmax lam * rel(i) - (1 - lam) * max_{j picked} sim(i, j). With labels, each pick comes from a label
    with the fewest picks so far (round-robin). Ties go to the lower index, so the result is deterministic."""
    left = [i for i in range(len(relevance)) if i not in set(exclude)]
    picked: list[int] = []
    counts: dict[Any, int] = {}
    if labels is not None:
        counts = {labels[i]: 0 for i in left}
    while left and len(picked) < k:
        pool = left
        if labels is not None:
            fewest = min(counts[labels[i]] for i in left)
            pool = [i for i in left if counts[labels[i]] == fewest]

        def gain(i: int) -> float:
            redundancy = max((float(pairwise[i][j]) for j in picked), default=0.0)
            return lam * float(relevance[i]) - (1.0 - lam) * redundancy

        best = max(pool, key=lambda i: (gain(i), -i))
        picked.append(best)
        left.remove(best)
        if labels is not None:
            counts[labels[best]] += 1
    return picked


def _save_atomically(path: Path, vectors: Any) -> None:
    """Write under a random temporary name in the cache folder, then rename: a reader never sees half a file."""
    import numpy as np
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".emb-", suffix=".npy", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            np.save(f, vectors, allow_pickle=False)
        os.replace(tmp, path)
    except OSError:  # the cache is an optimization: a read-only folder only costs re-embedding next run
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
