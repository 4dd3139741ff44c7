"""Configuration of the dedup stage: exact dedup on normalised text, then MinHash near-dedup.

Defaults: exact dedup on lower-cased, NFKC, whitespace-collapsed text; MinHash on word 5-grams of
text simplified the way datatrove does it (lower case, digits to 0, punctuation and diacritics
removed), 128 permutations, Jaccard threshold 0.7, bands x rows from datasketch's optimiser
(14 x 9 for these settings), candidate pairs verified by their estimated Jaccard.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal

from lmhpc.data.inputs import InputSpec

if TYPE_CHECKING:
    from lmhpc.config import RunConfig


def _error(key: str, message: str) -> Exception:
    from lmhpc.config import ConfigError

    return ConfigError(key, message)


@dataclass
class TextNormalization:
    """How text is normalised before it is hashed. Every step is optional."""

    unicode_form: Literal["NFKC", "NFC", "none"] = "NFKC"
    lowercase: bool = True
    collapse_whitespace: bool = True  # runs of whitespace become one space; ends are stripped
    remove_punctuation: bool = False  # Unicode punctuation (P*), ASCII symbols and controls become spaces
    digits_to_zero: bool = False  # every number (digits with at most one "." or "," inside) becomes "0"
    strip_diacritics: bool = False  # NFD, then combining marks removed


def _shingle_normalization() -> TextNormalization:
    # datatrove's simplify_text defaults, so both tools hash the same shingles
    return TextNormalization(unicode_form="none", lowercase=True, collapse_whitespace=True, remove_punctuation=True,
                             digits_to_zero=True, strip_diacritics=True)


@dataclass
class ExactDedupConfig:
    """Exact dedup: documents whose normalised text is identical (128-bit BLAKE2b) keep one copy."""

    enabled: bool = True
    normalize: TextNormalization = field(default_factory=TextNormalization)


@dataclass
class MinHashConfig:
    """MinHash near-dedup with LSH banding.

    ``bands``/``rows`` unset: datasketch's optimum for ``threshold`` and ``num_perm`` under
    ``lsh_weights`` (false-positive weight, false-negative weight). With ``verify``, a candidate pair
    found in a band bucket is kept only when its estimated Jaccard (over all ``num_perm`` values)
    reaches ``verify_threshold`` (default: ``threshold``).
    """

    enabled: bool = True
    shingle: Literal["word", "char"] = "word"
    ngram: int = 5  # words per shingle ("word") or characters per shingle ("char")
    num_perm: int = 128
    threshold: float = 0.7
    bands: int | None = None
    rows: int | None = None
    lsh_weights: list[float] = field(default_factory=lambda: [0.5, 0.5])
    verify: bool = True
    verify_threshold: float | None = None
    normalize: TextNormalization = field(default_factory=_shingle_normalization)
    bands_per_round: int = 4  # bands exchanged per alltoallv round (0: all at once); bounds exchange memory
    max_shingles_per_update: int = 65536  # a huge document is hashed in pieces of this many shingles


@dataclass
class DedupConfig:
    """Dedup stage: exact then near-duplicate removal over the curated shards, as one MPI job.

    Of each group of duplicates, the document with the highest ``quality_key`` (a number in its
    metadata; missing counts as lowest) is kept, ties going to the earliest one in the curate output
    (shard, then line). The kept set is therefore the same for any number of ranks.
    """

    seed: int | None = None  # MinHash permutation seed; default: run.seed
    exact: ExactDedupConfig = field(default_factory=ExactDedupConfig)
    minhash: MinHashConfig = field(default_factory=MinHashConfig)
    quality_key: str | None = None
    drop_empty: bool = True  # documents with no text left after normalisation are dropped ("empty")
    shard_max_mb: float = 64.0
    signature_batch_docs: int = 256  # documents signed per datasketch bulk call
    exchange_max_mb: float = 256.0  # largest alltoallv message per rank; bigger exchanges go in rounds
    largest_clusters: int = 10  # clusters listed in stats.json and clusters.json
    samples_per_cluster: int = 5
    keep_work: bool = False  # keep _work/ (signatures, decisions) after the stage completes
    # raw inputs (jsonl, parquet, WARC globs): when given, dedup reads these instead of the curate stage's output
    inputs: list[InputSpec] = field(default_factory=list)
    max_doc_bytes: int = 20_000_000  # raw inputs: larger documents are quarantined

    fingerprint_ignore: ClassVar[tuple[str, ...]] = ("signature_batch_docs", "exchange_max_mb", "keep_work",
                                                      "largest_clusters", "samples_per_cluster")

    def stage_reads(self, default: tuple[str, ...]) -> tuple[str, ...]:
        """Dedup reads the curate stage's shards, or nothing from the run when it has raw inputs."""
        return () if self.inputs else default

    def validate(self, root: RunConfig) -> None:
        m = self.minhash
        if not 2 <= m.num_perm <= 4096:
            raise _error("dedup.minhash.num_perm", f"must be between 2 and 4096, got {m.num_perm}")
        if not 0 < m.threshold <= 1:
            raise _error("dedup.minhash.threshold", f"must be in (0, 1], got {m.threshold}")
        if m.verify_threshold is not None and not 0 < m.verify_threshold <= 1:
            raise _error("dedup.minhash.verify_threshold", f"must be in (0, 1], got {m.verify_threshold}")
        if m.ngram < 1:
            raise _error("dedup.minhash.ngram", f"must be >= 1, got {m.ngram}")
        if m.shingle == "char" and m.ngram > 256:
            raise _error("dedup.minhash.ngram", "character shingles of more than 256 characters are not supported")
        if (m.bands is None) != (m.rows is None):
            raise _error("dedup.minhash.bands" if m.bands is None else "dedup.minhash.rows",
                         "give both bands and rows, or neither (then datasketch picks them)")
        if m.bands is not None and m.rows is not None:
            if m.bands < 1 or m.rows < 1:
                raise _error("dedup.minhash.bands", "bands and rows must be >= 1")
            if m.bands * m.rows > m.num_perm:
                raise _error("dedup.minhash.bands",
                             f"bands x rows = {m.bands * m.rows} exceeds num_perm = {m.num_perm}")
        if len(m.lsh_weights) != 2 or any(w < 0 for w in m.lsh_weights) or abs(sum(m.lsh_weights) - 1) > 1e-6:
            raise _error("dedup.minhash.lsh_weights", f"must be two weights >= 0 summing to 1, got {m.lsh_weights}")
        if m.bands_per_round < 0:
            raise _error("dedup.minhash.bands_per_round", "must be >= 0 (0: all bands in one round)")
        if m.max_shingles_per_update < 1:
            raise _error("dedup.minhash.max_shingles_per_update", "must be >= 1")
        if self.shard_max_mb <= 0:
            raise _error("dedup.shard_max_mb", "must be > 0")
        if self.signature_batch_docs < 1:
            raise _error("dedup.signature_batch_docs", "must be >= 1")
        if self.exchange_max_mb <= 0:
            raise _error("dedup.exchange_max_mb", "must be > 0")
        if self.largest_clusters < 0 or self.samples_per_cluster < 0:
            raise _error("dedup.largest_clusters", "largest_clusters and samples_per_cluster must be >= 0")
        if self.quality_key is not None and not self.quality_key:
            raise _error("dedup.quality_key", "must be a metadata key or null")
        for i, spec in enumerate(self.inputs):
            spec.validate_at(f"dedup.inputs[{i}]")
        if self.max_doc_bytes < 1:
            raise _error("dedup.max_doc_bytes", "must be >= 1")
        if "dedup" in root.run.stages and not (self.exact.enabled or m.enabled):
            raise _error("dedup.exact.enabled", "both exact and MinHash dedup are off; drop the stage instead")
