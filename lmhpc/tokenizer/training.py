"""Training a sentencepiece model with byte fallback from our config, and the facts later stages need.

Ids are fixed: ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, ``<pad>`` 3 (when enabled), then user and control tokens,
then the 256 byte tokens ``<0x00>``..``<0xFF>``, then the learned pieces. Byte fallback makes every input
encodable: characters outside the vocabulary become their UTF-8 bytes, never ``<unk>``.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as model_pb2

from lmhpc.fsutil import atomic_open, write_text
from lmhpc.tokenizer.config import TokenizerConfig


class VocabSizeError(ValueError):
    """The requested vocabulary does not fit the sample: too large for its text, or too small for its
    distinct characters."""


def trainer_options(cfg: TokenizerConfig, vocab_size: int, num_threads: int, hard_vocab_limit: bool = True
                    ) -> dict[str, Any]:
    """sentencepiece trainer options for our config."""
    return {
        "model_type": cfg.model_type,
        "vocab_size": vocab_size,
        "character_coverage": cfg.character_coverage,
        "byte_fallback": True,
        "split_digits": cfg.split_digits,
        "split_by_whitespace": cfg.split_by_whitespace,
        "allow_whitespace_only_pieces": cfg.allow_whitespace_only_pieces,
        "remove_extra_whitespaces": False,  # keep the text as it is: decode(encode(x)) == x
        "add_dummy_prefix": cfg.add_dummy_prefix,
        "normalization_rule_name": cfg.normalization,
        "max_sentencepiece_length": cfg.max_piece_length,
        "max_sentence_length": cfg.max_line_bytes,
        "input_sentence_size": 0,  # the sample is already drawn: use all of it, in its order
        "shuffle_input_sentence": False,
        "num_threads": max(1, num_threads),
        "unk_id": 0,
        "bos_id": 1,
        "eos_id": 2,
        "pad_id": 3 if cfg.pad_piece else -1,
        "unk_piece": cfg.unk_piece,
        "bos_piece": cfg.bos_piece,
        "eos_piece": cfg.eos_piece,
        "pad_piece": cfg.pad_piece or "<pad>",
        "user_defined_symbols": list(cfg.user_tokens),
        "control_symbols": list(cfg.control_tokens),
        "hard_vocab_limit": hard_vocab_limit,
        "vocabulary_output_piece_score": True,
        "minloglevel": 2,
    }


def train_model(lines: Iterable[str], cfg: TokenizerConfig, model_prefix: Path, vocab_size: int, num_threads: int,
                seed: int, hard_vocab_limit: bool = True) -> Path:
    """Train on ``lines`` and write ``<model_prefix>.model`` and ``.vocab`` (each renamed into place).
    The model bytes depend only on the lines, the options and the thread count (no paths are recorded in it).
    Raises :class:`VocabSizeError` when ``vocab_size`` does not fit the lines."""
    model_prefix = Path(model_prefix)
    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model,
                                       **trainer_options(cfg, vocab_size, num_threads, hard_vocab_limit))
    except RuntimeError as e:
        message = str(e).strip()
        if "Vocabulary size is too high" in message:
            raise VocabSizeError(f"vocab_size={vocab_size} is too large for the sample ({message})") from e
        if "Vocabulary size is smaller than required_chars" in message:
            raise VocabSizeError(
                f"vocab_size={vocab_size} is smaller than the number of distinct characters the sample needs "
                f"at character_coverage={cfg.character_coverage}; raise the vocab size or lower the coverage "
                f"(rarer characters then become byte tokens) ({message})"
            ) from e
        raise
    proto = model_pb2.ModelProto()
    proto.ParseFromString(model.getvalue())
    vocab = "".join(f"{p.piece}\t{p.score:g}\n" for p in proto.pieces)  # sentencepiece's own .vocab layout
    write_text(Path(f"{model_prefix}.vocab"), vocab)
    with atomic_open(Path(f"{model_prefix}.model"), "wb") as fh:
        fh.write(model.getvalue())
    return Path(f"{model_prefix}.model")


@dataclass(frozen=True)
class ModelFacts:
    """What the tokenize stage and the analysis need from a trained model."""

    vocab_size: int
    pieces: list[str]
    byte_mask: np.ndarray  # bool[vocab_size]: byte-fallback tokens
    unk_id: int
    bos_id: int
    eos_id: int
    pad_id: int


def model_facts(sp: spm.SentencePieceProcessor) -> ModelFacts:
    n = sp.get_piece_size()
    return ModelFacts(
        vocab_size=n,
        pieces=[sp.id_to_piece(i) for i in range(n)],
        byte_mask=np.array([sp.is_byte(i) for i in range(n)], dtype=bool),
        unk_id=sp.unk_id(),
        bos_id=sp.bos_id(),
        eos_id=sp.eos_id(),
        pad_id=sp.pad_id(),
    )


def load(model_path: Path) -> spm.SentencePieceProcessor:
    """Load a trained model."""
    return spm.SentencePieceProcessor(model_file=str(model_path))
