"""Planted near-duplicates with ground truth, and precision/recall of a dedup result against it.

From each original document the generator derives variants by edits (word substitutions),
insertions, deletions, reorderings (moved spans) or a mix, step by step, measuring the exact
Jaccard similarity of their shingle sets (the stage's default shingling) after each step:

- a *duplicate* variant stops before its similarity would fall below its level (>= 0.85 by default),
- a *near-miss* variant goes on until its similarity is at or below its level (<= 0.6 by default),
- *copies* are identical, *reformats* differ only in case and whitespace (exact dups once normalised).

Ground truth: an original and its duplicates/copies/reformats form one family; every near-miss is
a family of its own. Originals come from a given list of texts (e.g. the sample corpus) or from a
synthetic Zipf-distributed vocabulary.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lmhpc.data.documents import Document
from lmhpc.dedup.config import MinHashConfig
from lmhpc.dedup.normalize import normalize_text
from lmhpc.dedup.shingles import shingle_hashes

MUTATIONS = ("edit", "insert", "delete", "reorder", "mixed")


@dataclass
class PlantSpec:
    """What to plant around each original."""

    duplicate_levels: tuple[float, ...] = (0.85, 0.9, 0.95)
    near_miss_levels: tuple[float, ...] = (0.3, 0.5, 0.6)
    duplicates_per_original: tuple[int, int] = (1, 3)  # inclusive range
    near_misses_per_original: tuple[int, int] = (0, 1)
    copy_rate: float = 0.15  # chance that an original also gets an identical copy
    reformat_rate: float = 0.15  # chance of a copy differing only in case and whitespace
    min_words: int = 250  # originals shorter than this are not used (one step must not cross a level)


@dataclass
class PlantedPair:
    """One planted relation: a variant and the original it was derived from."""

    original: str
    variant: str
    kind: str  # copy, reformat, or a mutation name
    level: float  # the level aimed at
    jaccard: float  # the exact Jaccard similarity of their shingle sets
    duplicate: bool  # part of the original's family (ground truth)


@dataclass
class PlantedCorpus:
    """Documents in a shuffled order plus the ground truth."""

    docs: list[Document]
    family: dict[str, str]  # doc id -> family id, for every labelled document
    pairs: list[PlantedPair] = field(default_factory=list)


class _Shingler:
    def __init__(self, cfg: MinHashConfig) -> None:
        self.cfg = cfg

    def set_of(self, text: str) -> set[int]:
        values, _ = shingle_hashes([normalize_text(text, self.cfg.normalize)], self.cfg.shingle, self.cfg.ngram)
        return set(values.tolist())


def jaccard(a: set[int], b: set[int]) -> float:
    """Exact Jaccard similarity of two sets (1.0 for two empty sets)."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def synthetic_vocabulary(rng: random.Random, size: int = 20000) -> list[str]:
    """Pronounceable pseudo-words, most frequent first."""
    consonants, vowels = "bcdfghjklmnprstvwz", "aeiou"
    words, seen = [], set()
    while len(words) < size:
        n = rng.choice((1, 2, 2, 3, 3, 4))
        w = "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(n)) + rng.choice(("", "", "n", "s"))
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


class _WordSampler:
    """Words drawn with a Zipf-like distribution (rank ** -1.07)."""

    def __init__(self, vocab: list[str], rng: random.Random) -> None:
        self.vocab = vocab
        self.rng = rng
        weights = [1.0 / (r + 1) ** 1.07 for r in range(len(vocab))]
        total = sum(weights)
        acc, self.cum = 0.0, []
        for w in weights:
            acc += w / total
            self.cum.append(acc)

    def words(self, n: int) -> list[str]:
        return self.rng.choices(self.vocab, cum_weights=self.cum, k=n)


def synthetic_text(sampler: _WordSampler, rng: random.Random, n_words: int) -> str:
    """Sentences of 6-20 words with capitals and full stops."""
    out, left = [], n_words
    while left > 0:
        k = min(left, rng.randint(6, 20))
        words = sampler.words(k)
        out.append(words[0].capitalize() + " " + " ".join(words[1:]) + ".")
        left -= k
    return " ".join(out)


def _mutate(words: list[str], kind: str, rng: random.Random, sampler: _WordSampler) -> list[str]:
    """One small step of the given kind."""
    words = list(words)
    if kind == "mixed":
        kind = rng.choice(("edit", "insert", "delete", "reorder"))
    n = len(words)
    if kind == "edit":
        words[rng.randrange(n)] = sampler.words(1)[0]
    elif kind == "insert":
        at = rng.randrange(n + 1)
        words[at:at] = sampler.words(rng.randint(1, 3))
    elif kind == "delete" and n > 10:
        del words[rng.randrange(n)]
    elif kind == "reorder" and n > 20:
        span = rng.randint(3, max(3, min(15, n // 4)))
        start = rng.randrange(n - span)
        block = words[start : start + span]
        del words[start : start + span]
        at = rng.randrange(len(words) + 1)
        words[at:at] = block
    else:  # a step that cannot apply to so short a text
        words[rng.randrange(n)] = sampler.words(1)[0]
    return words


def derive(original: str, kind: str, level: float, duplicate: bool, rng: random.Random, sampler: _WordSampler,
           shingler: _Shingler, max_steps: int = 400) -> tuple[str, float] | None:
    """A variant of ``original`` at the given Jaccard level, or None when none could be made.

    A duplicate takes steps while its similarity stays >= level and ends changed (similarity < 1); a
    near miss takes steps until its similarity is <= level. Far from the level, a step makes several
    mutations at once.
    """
    base = shingler.set_of(original)
    current, sim = original.split(), 1.0
    cap = None  # most mutations per step, halved after a step overshot
    for _ in range(max_steps):
        # one mutation moves the similarity by roughly 10 / len(words): aim for a quarter of the gap
        k = max(1, int((sim - level) * len(current) / 40))
        k = min(k, cap) if cap else k
        nxt = current
        for _ in range(k):
            nxt = _mutate(nxt, kind, rng, sampler)
        s = jaccard(base, shingler.set_of(" ".join(nxt)))
        if duplicate and s < level:
            if k > 1:
                cap = k // 2
                continue
            if sim < 1.0:
                return " ".join(current), sim
            continue  # not changed yet and one step already crosses: try another step
        current, sim = nxt, s
        if not duplicate and sim <= level:
            return " ".join(current), sim
    return (" ".join(current), sim) if duplicate and level <= sim < 1.0 else None


def reformat(text: str, rng: random.Random) -> str:
    """Same words, different case and whitespace: an exact duplicate once normalised."""
    out = []
    for w in text.split():
        out.append(w.upper() if rng.random() < 0.1 else w)
        out.append(rng.choice((" ", " ", "  ", "\n", "\t")))
    return "".join(out).strip()


def plant(n_originals: int, seed: int = 0, spec: PlantSpec | None = None, base_texts: list[str] | None = None,
          background: int = 0, minhash: MinHashConfig | None = None, id_prefix: str = "") -> PlantedCorpus:
    """``n_originals`` originals with planted variants, plus ``background`` unrelated synthetic documents.

    With ``base_texts``, originals are taken from it (texts with at least ``spec.min_words`` words) and
    substitutions draw from its vocabulary; otherwise everything is synthetic.
    """
    spec = spec or PlantSpec()
    rng = random.Random(seed)
    shingler = _Shingler(minhash or MinHashConfig())
    if base_texts:
        usable = [t for t in base_texts if len(t.split()) >= spec.min_words]
        if len(usable) < n_originals:
            raise ValueError(f"only {len(usable)} base texts have >= {spec.min_words} words; need {n_originals}")
        originals = rng.sample(usable, n_originals)
        counts = Counter(w for t in usable[:2000] for w in t.split())
        sampler = _WordSampler([w for w, _ in counts.most_common(20000)], rng)
    else:
        sampler = _WordSampler(synthetic_vocabulary(rng), rng)
        originals = [synthetic_text(sampler, rng, rng.randint(spec.min_words, 3 * spec.min_words))
                     for _ in range(n_originals)]
    docs: list[Document] = []
    family: dict[str, str] = {}
    pairs: list[PlantedPair] = []
    for n, text in enumerate(originals):
        oid = f"{id_prefix}p{n:06d}"
        docs.append(Document(id=oid, text=text, source="planted"))
        family[oid] = oid
        variants: list[tuple[str, str, float, bool]] = []
        if rng.random() < spec.copy_rate:
            variants.append(("copy", text, 1.0, True))
        if rng.random() < spec.reformat_rate:
            variants.append(("reformat", reformat(text, rng), 1.0, True))
        for dup, levels, how_many in ((True, spec.duplicate_levels, spec.duplicates_per_original),
                                      (False, spec.near_miss_levels, spec.near_misses_per_original)):
            for _ in range(rng.randint(*how_many)):
                kind, level = rng.choice(MUTATIONS), rng.choice(levels)
                made = derive(text, kind, level, dup, rng, sampler, shingler)
                if made is not None:
                    variants.append((kind, made[0], level, dup))
        base = shingler.set_of(text)
        for k, (kind, vtext, level, dup) in enumerate(variants):
            vid = f"{id_prefix}p{n:06d}-{k}"
            sim = jaccard(base, shingler.set_of(vtext))
            docs.append(Document(id=vid, text=vtext, source="planted"))
            family[vid] = oid if dup else vid
            pairs.append(PlantedPair(oid, vid, kind, level, round(sim, 4), dup))
    for b in range(background):
        docs.append(Document(id=f"{id_prefix}b{b:06d}", text=synthetic_text(sampler, rng, rng.randint(40, 400)),
                             source="background"))
    rng.shuffle(docs)
    return PlantedCorpus(docs=docs, family=family, pairs=pairs)


# --------------------------------------------------------------------------------------------- scoring


def predicted_clusters(links: list[tuple[str, str]]) -> dict[str, str]:
    """Cluster id of every document named in ``(dropped id, kept id)`` links (union-find)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in links:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {x: find(x) for x in parent}


def _pairs(counts: Counter) -> int:
    return sum(c * (c - 1) // 2 for c in counts.values())


def score(predicted: dict[str, str], corpus: PlantedCorpus) -> dict[str, Any]:
    """Pairwise precision, recall and F1 over the labelled documents, plus per-level recall of planted pairs.

    A pair is predicted when both documents are in one predicted cluster (documents absent from
    ``predicted`` are singletons) and true when both are in one family.
    """
    labelled = corpus.family
    pred = {d: predicted.get(d, f"single:{d}") for d in labelled}
    pred_pairs = _pairs(Counter(pred.values()))
    true_pairs = _pairs(Counter(labelled.values()))
    tp = _pairs(Counter((pred[d], labelled[d]) for d in labelled))
    precision = tp / pred_pairs if pred_pairs else 1.0
    recall = tp / true_pairs if true_pairs else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    by_level: dict[str, dict[str, float]] = {}
    for p in corpus.pairs:
        key = f"{'dup' if p.duplicate else 'miss'}@{p.level:g}"
        slot = by_level.setdefault(key, {"pairs": 0, "merged": 0})
        slot["pairs"] += 1
        slot["merged"] += pred[p.original] == pred[p.variant]
    for slot in by_level.values():
        slot["merged_rate"] = round(slot["merged"] / slot["pairs"], 4)
    dup_pairs = [p for p in corpus.pairs if p.duplicate and p.jaccard >= 0.85]
    found = sum(pred[p.original] == pred[p.variant] for p in dup_pairs)
    return {
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
        "true_pairs": true_pairs,
        "predicted_pairs": pred_pairs,
        "true_positive_pairs": tp,
        "planted_pair_recall_j085": round(found / len(dup_pairs), 4) if dup_pairs else math.nan,
        "by_level": dict(sorted(by_level.items())),
    }


def jaccard_summary(corpus: PlantedCorpus) -> dict[str, Any]:
    """Min/mean/max exact Jaccard of the planted pairs, by kind of relation (a check of the generator)."""
    out: dict[str, Any] = {}
    for dup in (True, False):
        sims = np.array([p.jaccard for p in corpus.pairs if p.duplicate == dup and p.kind not in ("copy",)])
        if len(sims):
            out["duplicates" if dup else "near_misses"] = {"n": len(sims), "min": float(sims.min()),
                                                           "mean": round(float(sims.mean()), 4),
                                                           "max": float(sims.max())}
    return out
