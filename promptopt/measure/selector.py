"""Per-input prompt selection (`final.selector`; issue #31 item 3, after "Automatic Prompt Selection for
Large Language Models"): learn, from the finalists' scores on examples they were all scored on, which
finalist to use for each new input, then route each test input to its finalist.

Inputs are embedded as TF-IDF bags of words (lower-cased word tokens, smoothed idf, L2-normalized): it
needs no model call and no extra package, so it works on every backend, costs nothing from the budget,
and is deterministic. Two learners:
- `centroid`: each finalist's centroid of the inputs it got right (weighted by score); an input goes to
  the finalist whose centroid is most cosine-similar.
- `logistic`: one L2-regularized logistic model per finalist predicting its score from the input;
  an input goes to the finalist with the highest prediction.
Ties, and an input with no known word, go to the default (the single best finalist).

A selector learned on a few dozen examples can route worse than the default would (it spreads inputs over
finalists whose wins on the pool were luck). `held_out_check` asks first: learned on all folds but one of
its examples and routing the held-out one, does it beat the default there? If not, the selector keeps the
default for every input (`routes` false); it costs no model call, as every finalist's score on the pool is
known.

A run with a selector writes it to `selector.json` in the run dir (`RunSelector.to_json`): the learned
vectors and each finalist's prompt, so `promptopt.load_selector(run_dir)` routes new inputs without the
run, the task or a model."""
from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

from promptopt.errors import ConfigError

Vector = dict[str, float]
_WORD = re.compile(r"\w+", re.UNICODE)
METHODS = ("centroid", "logistic")


def _tokens(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def selector_text(input: str, fields: Mapping[str, Any] | None = None) -> str:
    """What a selector reads of an example: its input and extra fields, never its answer."""
    return " ".join([input, *map(str, (fields or {}).values())])


class TfIdf:
    """TF-IDF vectors with the vocabulary and idf of the texts it was fit on."""

    def __init__(self, texts: Sequence[str], idf: Mapping[str, float] | None = None):
        if idf is not None:  # a saved vocabulary (selector.json)
            self.idf = dict(idf)
            return
        df: Counter[str] = Counter()
        for t in texts:
            df.update(set(_tokens(t)))
        n = len(texts)
        self.idf = {w: math.log((1 + n) / (1 + c)) + 1 for w, c in df.items()}

    def __call__(self, text: str) -> Vector:
        tf = Counter(w for w in _tokens(text) if w in self.idf)
        v = {w: c * self.idf[w] for w, c in tf.items()}
        norm = math.sqrt(sum(x * x for x in v.values()))
        return {w: x / norm for w, x in v.items()} if norm else {}


def _dot(a: Vector, b: Vector) -> float:
    if len(a) > len(b):
        a, b = b, a
    return sum(x * b.get(w, 0.0) for w, x in a.items())


class Selector:
    """Learned on `texts` with `scores[candidate_id][i]` the candidate's score on texts[i] (in [0, 1])."""

    def __init__(self, method: str, texts: Sequence[str], scores: Mapping[str, Sequence[float]], default: str,
                 *, epochs: int = 200, lr: float = 0.5, l2: float = 0.01):
        if method not in METHODS:
            raise ValueError(f"selector method must be one of {', '.join(METHODS)}, not {method!r}")
        self.method, self.default = method, default
        self.routes = True  # False: every input goes to the default (it failed its held-out check)
        self.ids = list(scores)  # candidates in the caller's order: ties go to the default, then the first
        self.embed = TfIdf(texts)
        xs = [self.embed(t) for t in texts]
        self.models: dict[str, tuple[Vector, float]] = {}
        for cid in self.ids:
            ys = [min(1.0, max(0.0, float(s))) for s in scores[cid]]
            self.models[cid] = (_centroid(xs, ys), 0.0) if method == "centroid" else _logistic(xs, ys, epochs, lr, l2)

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "default": self.default, "ids": self.ids, "routes": self.routes,
                "idf": self.embed.idf, "models": {cid: {"w": w, "b": b} for cid, (w, b) in self.models.items()}}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Selector":
        self = cls.__new__(cls)
        self.method, self.default, self.ids = d["method"], d["default"], list(d["ids"])
        self.routes = bool(d.get("routes", True))  # files written before the check always route
        self.embed = TfIdf((), idf=d["idf"])
        self.models = {cid: ({w: float(x) for w, x in m["w"].items()}, float(m["b"])) for cid, m in d["models"].items()}
        return self

    def score(self, text: str) -> dict[str, float]:
        """Each candidate's affinity to `text` (cosine to its centroid, or predicted score)."""
        x = self.embed(text)
        out = {}
        for cid, (w, b) in self.models.items():
            z = _dot(x, w) + b
            out[cid] = z if self.method == "centroid" else 1 / (1 + math.exp(-z))
        return out

    def choose(self, text: str) -> str:
        if not self.routes:
            return self.default
        s = self.score(text)
        top = max(s.values())
        if s.get(self.default, -math.inf) >= top - 1e-12 or not self.embed(text):
            return self.default
        return next(cid for cid in self.ids if s[cid] >= top - 1e-12)


def held_out_check(method: str, texts: Sequence[str], scores: Mapping[str, Sequence[float]], default: str,
                   folds: Sequence[Sequence[int]]) -> dict[str, float | bool]:
    """Route each input of each fold (indices into `texts`) by a selector learned on the other folds; the
    mean score that routing gets, the default's mean on the same inputs, and whether routing is better."""
    routed = kept = 0.0
    n = 0
    for fold in folds:
        held = set(fold)
        rest = [i for i in range(len(texts)) if i not in held]
        if not fold or not rest:
            continue
        sel = Selector(method, [texts[i] for i in rest], {c: [s[i] for i in rest] for c, s in scores.items()},
                       default)
        for i in fold:
            routed += scores[sel.choose(texts[i])][i]
            kept += scores[default][i]
            n += 1
    routed, kept = (routed / n, kept / n) if n else (0.0, 0.0)
    return {"routed": routed, "pick": kept, "routes": routed > kept}


def _centroid(xs: Sequence[Vector], ys: Sequence[float]) -> Vector:
    c: Vector = {}
    for x, y in zip(xs, ys):
        for w, v in x.items():
            c[w] = c.get(w, 0.0) + y * v
    norm = math.sqrt(sum(v * v for v in c.values()))
    return {w: v / norm for w, v in c.items()} if norm else {}


def _logistic(xs: Sequence[Vector], ys: Sequence[float], epochs: int, lr: float, l2: float) -> tuple[Vector, float]:
    """Full-batch gradient descent on the mean log loss plus l2/2 |w|^2 (sparse inputs, a few hundred words)."""
    w: Vector = {}
    b = 0.0
    n = max(1, len(xs))
    for _ in range(epochs):
        gw: Vector = {}
        gb = 0.0
        for x, y in zip(xs, ys):
            err = 1 / (1 + math.exp(-(_dot(x, w) + b))) - y
            gb += err
            for k, v in x.items():
                gw[k] = gw.get(k, 0.0) + err * v
        for k in set(gw) | set(w):
            w[k] = w.get(k, 0.0) - lr * (gw.get(k, 0.0) / n + l2 * w.get(k, 0.0))
        b -= lr * gb / n
    return w, b


SELECTOR_FILE = "selector.json"


class RunSelector:
    """A run's learned selector with its finalists' prompts: `choose(input)` gives the id of the finalist
    for that input, `prompt(input)` the text that finalist puts where the template has {prompt}
    (instruction and fixed demos; a finalist whose demos are retrieved per input gives its instruction,
    and `retrieval[id]` its policy)."""

    def __init__(self, selector: Selector, prompts: Mapping[str, str],
                 retrieval: Mapping[str, Mapping[str, Any]] | None = None):
        self.selector, self.prompts, self.retrieval = selector, dict(prompts), dict(retrieval or {})

    def choose(self, input: str, **fields: Any) -> str:
        return self.selector.choose(selector_text(input, fields))

    def prompt(self, input: str, **fields: Any) -> str:
        return self.prompts[self.choose(input, **fields)]

    def to_json(self) -> dict[str, Any]:
        return {"selector": self.selector.to_json(), "prompts": self.prompts,
                **({"retrieval": self.retrieval} if self.retrieval else {})}

    @classmethod
    def load(cls, run_dir: str | Path) -> "RunSelector":
        import json
        path = Path(run_dir) / SELECTOR_FILE
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            return cls(Selector.from_json(d["selector"]), d["prompts"], d.get("retrieval"))
        except FileNotFoundError:
            raise ConfigError(f"{run_dir}: no {SELECTOR_FILE}; only a finished run with final.selector=centroid or "
                              "logistic has one") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{path}: not a readable selector ({type(e).__name__}: {e})") from None


def load_selector(run_dir: str | Path) -> RunSelector:
    """The selector a finished run learned (`final.selector`), ready to route new inputs."""
    return RunSelector.load(run_dir)
