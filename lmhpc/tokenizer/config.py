"""Configuration of the tokenizer (training) and tokenize (encoding) stages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal

if TYPE_CHECKING:
    from lmhpc.config import RunConfig

MixMode = Literal["weights", "natural"]


@dataclass
class TokenizerAnalysisConfig:
    """Token analysis done by the tokenizer stage on a held-out part of the data."""

    heldout_mb: float = 2.0  # per source: held-out text (never trained on) the tokenizers are compared on
    per_source_tokenizers: bool = True  # also train one tokenizer per source alone, to compare against
    per_source_vocab_size: int = 0  # vocab of those tokenizers; 0: the main tokenizer's vocab_size
    per_source_sample_mb: float = 10.0  # text each of those is trained on (at most; a small source gives less)
    top_tokens: int = 20  # how many of the most frequent tokens to list per source / language


@dataclass
class TokenizerConfig:
    """Tokenizer stage: a sentencepiece BPE model with byte fallback, trained on a weighted, seeded sample
    of the deduplicated data."""

    vocab_size: int = 32000
    model_type: Literal["bpe", "unigram"] = "bpe"
    split_digits: bool = True  # every digit is its own token
    add_dummy_prefix: bool = True  # a leading space is added to the text (llama.cpp expects it)
    allow_whitespace_only_pieces: bool = True  # runs of spaces (code indentation) may be one token
    split_by_whitespace: bool = True
    normalization: Literal["identity", "nfkc", "nmt_nfkc"] = "identity"  # identity: text is kept as it is
    character_coverage: float = 0.9995  # rarer characters are encoded as UTF-8 byte tokens
    max_piece_length: int = 16
    unk_piece: str = "<unk>"
    bos_piece: str = "<s>"
    eos_piece: str = "</s>"  # also the end-of-document token appended by the tokenize stage
    pad_piece: str | None = "<pad>"  # null: no padding token
    user_tokens: list[str] = field(default_factory=list)  # matched verbatim in text, e.g. chat markers
    control_tokens: list[str] = field(default_factory=list)  # never produced from text, only by id
    # sampling: how much text the model is trained on, and from which sources
    sample_mb: float = 100.0  # total UTF-8 megabytes of text in the training sample
    sample_mix: MixMode = "weights"  # weights: each source gets its weight's share; natural: size x weight
    source_weights: dict[str, float] = field(default_factory=dict)  # default: curate.inputs weights, else 1
    max_line_bytes: int = 8192  # training lines longer than this are cut into pieces of this size
    # training threads. Fixed, not taken from the machine: sentencepiece's trainer breaks ties differently with
    # another thread count, so the model depends on it (and only on it and the sample)
    num_threads: int = 8
    read_workers: int = 0  # processes reading the input shards; 0: the stage's cpus_per_task
    analysis: TokenizerAnalysisConfig = field(default_factory=TokenizerAnalysisConfig)

    def validate(self, root: RunConfig) -> None:
        from lmhpc.config import ConfigError

        specials = [self.unk_piece, self.bos_piece, self.eos_piece] + ([self.pad_piece] if self.pad_piece else [])
        reserved = len(specials) + len(self.user_tokens) + len(self.control_tokens) + 256  # 256 byte tokens
        if self.vocab_size <= reserved:
            raise ConfigError(
                "tokenizer.vocab_size",
                f"{self.vocab_size} leaves no room for learned pieces: {reserved} ids are taken by special, "
                "user and byte-fallback tokens",
            )
        if self.vocab_size > 2**31 - 1:
            raise ConfigError("tokenizer.vocab_size", "must fit in int32")
        every = specials + self.user_tokens + self.control_tokens
        for key, tokens in (("user_tokens", self.user_tokens), ("control_tokens", self.control_tokens)):
            for i, tok in enumerate(tokens):
                if not tok or any(c.isspace() for c in tok):
                    raise ConfigError(f"tokenizer.{key}[{i}]", f"{tok!r} must be non-empty without whitespace")
        if len(set(every)) != len(every):
            raise ConfigError("tokenizer.user_tokens", f"special tokens must be distinct: {every}")
        for key in ("unk_piece", "bos_piece", "eos_piece"):
            if not getattr(self, key):
                raise ConfigError(f"tokenizer.{key}", "must not be empty")
        if not 0 < self.character_coverage <= 1:
            raise ConfigError("tokenizer.character_coverage", "must be in (0, 1]")
        if self.sample_mb <= 0:
            raise ConfigError("tokenizer.sample_mb", "must be > 0")
        if self.max_line_bytes < 64:
            raise ConfigError("tokenizer.max_line_bytes", "must be >= 64")
        if self.max_piece_length < 1:
            raise ConfigError("tokenizer.max_piece_length", "must be >= 1")
        if self.num_threads < 1:
            raise ConfigError("tokenizer.num_threads", "must be >= 1")
        if self.read_workers < 0:
            raise ConfigError("tokenizer.read_workers", "must be >= 0")
        for src, w in self.source_weights.items():
            if w < 0:
                raise ConfigError(f"tokenizer.source_weights.{src}", "must be >= 0")
        a = self.analysis
        if a.heldout_mb < 0:
            raise ConfigError("tokenizer.analysis.heldout_mb", "must be >= 0")
        if a.per_source_sample_mb <= 0:
            raise ConfigError("tokenizer.analysis.per_source_sample_mb", "must be > 0")
        if a.per_source_vocab_size < 0:
            raise ConfigError("tokenizer.analysis.per_source_vocab_size", "must be >= 0")
        if a.per_source_vocab_size and a.per_source_vocab_size <= reserved:
            raise ConfigError("tokenizer.analysis.per_source_vocab_size", f"must be > {reserved} (or 0)")
        if a.top_tokens < 0:
            raise ConfigError("tokenizer.analysis.top_tokens", "must be >= 0")


@dataclass
class TokenizeConfig:
    """Tokenize stage: encode the deduplicated shards into Megatron indexed datasets and write a blend."""

    append_eod: bool = True  # append the end-of-document token (the tokenizer's eos) to every document
    dtype: Literal["auto", "uint16", "int32"] = "auto"  # auto: uint16 when vocab_size < 65500 (Megatron's rule)
    output: Literal["per_source", "shards"] = "per_source"  # merge each source into one prefix, or keep shards
    batch_docs: int = 2048  # documents per encode call
    batch_mb: float = 16.0  # ... or this much text, whichever comes first
    num_threads: int = 0  # sentencepiece encode threads; 0: the stage's cpus_per_task
    blend_mix: MixMode = "natural"  # natural: weight x tokens (weight = upsampling); weights: shares as given
    blend_weights: dict[str, float] = field(default_factory=dict)  # default: curate.inputs weights, else 1
    top_tokens: int = 20  # most frequent tokens listed per source / language in the analysis

    fingerprint_ignore: ClassVar[tuple[str, ...]] = ("batch_docs", "batch_mb", "num_threads")

    def validate(self, root: RunConfig) -> None:
        from lmhpc.config import ConfigError

        if self.batch_docs < 1:
            raise ConfigError("tokenize.batch_docs", "must be >= 1")
        if self.batch_mb <= 0:
            raise ConfigError("tokenize.batch_mb", "must be > 0")
        if self.num_threads < 0:
            raise ConfigError("tokenize.num_threads", "must be >= 0")
        if self.top_tokens < 0:
            raise ConfigError("tokenize.top_tokens", "must be >= 0")
        for src, w in self.blend_weights.items():
            if w < 0:
                raise ConfigError(f"tokenize.blend_weights.{src}", "must be >= 0")
        if self.dtype == "uint16" and root.tokenizer.vocab_size > 65535:
            raise ConfigError(
                "tokenize.dtype", f"uint16 cannot hold ids of tokenizer.vocab_size={root.tokenizer.vocab_size}"
            )
