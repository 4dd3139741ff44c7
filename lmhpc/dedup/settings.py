"""The resolved settings of one dedup run: config values plus the derived LSH shape and seed."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from lmhpc.dedup.config import DedupConfig, TextNormalization
from lmhpc.dedup.signatures import MinHashSigner, lsh_params


@dataclass(frozen=True)
class DedupSettings:
    """Everything that decides which documents are duplicates (and so the output bytes)."""

    exact: bool
    exact_norm: TextNormalization
    near: bool
    near_norm: TextNormalization
    shingle: str
    ngram: int
    num_perm: int
    seed: int
    bands: int
    rows: int
    threshold: float
    verify: bool
    verify_threshold: float
    quality_key: str | None
    drop_empty: bool
    max_shingles_per_update: int

    @classmethod
    def from_config(cls, cfg: DedupConfig, run_seed: int) -> DedupSettings:
        """Resolve bands x rows (datasketch's optimum unless given) and the seed (run seed unless given)."""
        m = cfg.minhash
        if m.bands is not None and m.rows is not None:
            bands, rows = m.bands, m.rows
        else:
            bands, rows = lsh_params(m.threshold, m.num_perm, m.lsh_weights[0], m.lsh_weights[1])
        return cls(
            exact=cfg.exact.enabled,
            exact_norm=cfg.exact.normalize,
            near=m.enabled,
            near_norm=m.normalize,
            shingle=m.shingle,
            ngram=m.ngram,
            num_perm=m.num_perm,
            seed=cfg.seed if cfg.seed is not None else run_seed,
            bands=bands,
            rows=rows,
            threshold=m.threshold,
            verify=m.verify,
            verify_threshold=m.verify_threshold if m.verify_threshold is not None else m.threshold,
            quality_key=cfg.quality_key,
            drop_empty=cfg.drop_empty,
            max_shingles_per_update=m.max_shingles_per_update,
        )

    def signer(self) -> MinHashSigner:
        """The MinHash signer for these settings (same permutations on every rank)."""
        return MinHashSigner(self.num_perm, self.seed, self.bands, self.rows, self.max_shingles_per_update)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """A digest of the settings that shape per-shard work files (signatures, band keys, hashes)."""
        keys = ("exact", "exact_norm", "near", "near_norm", "shingle", "ngram", "num_perm", "seed", "bands", "rows",
                "quality_key")
        data = {k: v for k, v in self.to_dict().items() if k in keys}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def decision_fingerprint(self) -> str:
        """A digest of every setting that decides the kept set."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]
