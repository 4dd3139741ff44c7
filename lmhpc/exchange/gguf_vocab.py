"""Tokenizers in GGUF metadata (``tokenizer.ggml.*``), both ways.

- ``llama`` (sentencepiece): tokens, scores and token types, as llama.cpp's SPM tokenizer reads them. Our
  sentencepiece model is written as is; reading one back rebuilds a sentencepiece ``ModelProto`` (BPE,
  identity normalisation: llama.cpp normalises nothing either), saved as ``tokenizer.model``.
- ``gpt2`` (byte-level BPE): tokens and merges, with the pre-tokenizer named by ``tokenizer.ggml.pre``.
  Reading one back builds the matching ``tokenizers`` tokenizer (``tokenizer.json`` with
  ``tokenizer_config.json``: special tokens and the file's chat template).

A model's embedding may have more rows than its tokenizer has pieces (our vocabulary is padded to a
multiple for training); llama.cpp wants one token per row, so the rest are written as ``[PAD<i>]`` tokens of
type UNUSED, as llama.cpp's own converter does.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# llama.cpp's pre-tokenizers for byte-level BPE vocabularies that we can express with `tokenizers`
DIGITS_THEN_GPT2 = ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva")
GPT2_REGEX = ("gpt2", "default", "mpt", "olmo", "jais", "trillion")
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
SPLIT_REGEX = {"llama-bpe": LLAMA3_SPLIT, "llama3": LLAMA3_SPLIT, "llama-v3": LLAMA3_SPLIT}


@dataclass
class GGUFVocab:
    """What ``tokenizer.ggml.*`` holds."""

    model: str  # "llama" (sentencepiece) or "gpt2" (byte-level BPE)
    pre: str
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] | None = None
    special: dict[str, int] = field(default_factory=dict)  # bos, eos, unk, pad → id
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool = False
    chat_template: str | None = None

    def pad_to(self, rows: int) -> None:
        """Add ``[PAD<i>]`` tokens (UNUSED) up to ``rows`` tokens."""
        if rows < len(self.tokens):
            raise ValueError(f"the tokenizer has {len(self.tokens)} tokens but the embedding only {rows} rows")
        extra = range(len(self.tokens), rows)
        self.tokens += [f"[PAD{i}]" for i in extra]
        self.types += [UNUSED] * len(extra)
        if self.scores is not None:
            self.scores += [-1e9] * len(extra)


# ------------------------------------------------------------------------------------- to GGUF

def _chat_template(files: dict[str, bytes]) -> str | None:
    if "tokenizer_config.json" not in files:
        return None
    template = json.loads(files["tokenizer_config.json"]).get("chat_template")
    return template if isinstance(template, str) else None


def sentencepiece_vocab(model: bytes, files: dict[str, bytes]) -> GGUFVocab:
    """A sentencepiece model (``tokenizer.model``) as GGUF's ``llama`` vocabulary."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(model)
    norm = proto.normalizer_spec
    if norm.name not in ("identity", "") or norm.remove_extra_whitespaces:
        log.warning("the sentencepiece model normalises text (%s%s); llama.cpp does not, so text that normalisation "
                    "changes tokenizes differently there", norm.name,
                    ", collapses whitespace" if norm.remove_extra_whitespaces else "")
    spec = proto.trainer_spec
    special = {name: i for name, i in (("bos", spec.bos_id), ("eos", spec.eos_id), ("unk", spec.unk_id),
                                        ("pad", spec.pad_id)) if i >= 0}
    add_bos = True
    if "tokenizer_config.json" in files:
        add_bos = bool(json.loads(files["tokenizer_config.json"]).get("add_bos_token", True))
    return GGUFVocab(model="llama", pre="default", tokens=[p.piece for p in proto.pieces],
                     types=[int(p.type) for p in proto.pieces], scores=[float(p.score) for p in proto.pieces],
                     special=special, add_bos=add_bos and "bos" in special, add_space_prefix=norm.add_dummy_prefix,
                     chat_template=_chat_template(files))


def _pre_name(pre_tokenizer: dict[str, Any] | None) -> str:
    """llama.cpp's name for a byte-level BPE pre-tokenizer of ``tokenizer.json``; others are refused."""
    steps = (pre_tokenizer or {}).get("pretokenizers", [pre_tokenizer]) if pre_tokenizer else []
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        regex = steps[0].get("pattern", {}).get("Regex")
        for name, pattern in SPLIT_REGEX.items():
            if regex == pattern:
                return name
    raise ValueError(f"this tokenizer.json's pre-tokenizer {kinds} has no llama.cpp equivalent we know of")


def byte_level_vocab(tokenizer_json: bytes, files: dict[str, bytes]) -> GGUFVocab:
    """A byte-level BPE ``tokenizer.json`` as GGUF's ``gpt2`` vocabulary."""
    data = json.loads(tokenizer_json)
    model = data["model"]
    if model.get("type") != "BPE" or (data.get("decoder") or {}).get("type") != "ByteLevel":
        raise ValueError("only sentencepiece models and byte-level BPE tokenizer.json files export to GGUF")
    vocab: dict[str, int] = dict(model["vocab"])
    added = {t["content"]: t for t in data.get("added_tokens", [])}
    for content, t in added.items():
        vocab[content] = t["id"]
    tokens = [""] * (max(vocab.values()) + 1)
    for piece, i in vocab.items():
        tokens[i] = piece
    types = [(CONTROL if added[t]["special"] else USER_DEFINED) if t in added else NORMAL for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    config = json.loads(files.get("tokenizer_config.json", b"{}"))
    special: dict[str, int] = {}
    for name in ("bos", "eos", "unk", "pad"):
        value = config.get(f"{name}_token")
        value = value.get("content") if isinstance(value, dict) else value
        if isinstance(value, str) and value in vocab:
            special[name] = vocab[value]
    return GGUFVocab(model="gpt2", pre=_pre_name(data.get("pre_tokenizer")), tokens=tokens, types=types,
                     merges=merges, special=special, add_bos=bool(config.get("add_bos_token", False)),
                     chat_template=_chat_template(files))


def vocab_for_gguf(files: dict[str, bytes], rows: int) -> GGUFVocab:
    """The GGUF vocabulary of a model's tokenizer files, padded to the embedding's ``rows``."""
    if "tokenizer.model" in files:
        vocab = sentencepiece_vocab(files["tokenizer.model"], files)
    elif "tokenizer.json" in files:
        vocab = byte_level_vocab(files["tokenizer.json"], files)
    else:
        raise ValueError("GGUF needs the model's tokenizer (tokenizer.model or tokenizer.json); none came with it")
    vocab.pad_to(rows)
    return vocab


# ------------------------------------------------------------------------------------- from GGUF

def sentencepiece_model(vocab: GGUFVocab) -> bytes:
    """A sentencepiece BPE model equal to a GGUF ``llama`` vocabulary (scores rank the merges)."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    scores = vocab.scores or [0.0] * len(vocab.tokens)
    for token, score, kind in zip(vocab.tokens, scores, vocab.types):
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = token, score, kind
    spec = proto.trainer_spec
    spec.model_type = pb.TrainerSpec.BPE
    spec.vocab_size = len(vocab.tokens)
    spec.byte_fallback = BYTE in vocab.types
    unk = vocab.special.get("unk", next((i for i, k in enumerate(vocab.types) if k == UNKNOWN), -1))
    if unk < 0:
        raise ValueError("a sentencepiece vocabulary needs an unknown token")
    spec.unk_id = unk
    spec.bos_id, spec.eos_id, spec.pad_id = (vocab.special.get(k, -1) for k in ("bos", "eos", "pad"))
    if spec.pad_id in (spec.bos_id, spec.eos_id, spec.unk_id):  # sentencepiece wants distinct ids
        spec.pad_id = -1
    for name in ("bos", "eos", "pad"):
        i = getattr(spec, f"{name}_id")
        if i >= 0 and vocab.types[i] != CONTROL:
            setattr(spec, f"{name}_id", -1)
    norm = proto.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = vocab.add_space_prefix
    norm.remove_extra_whitespaces = False
    norm.escape_whitespaces = True
    return proto.SerializeToString()


def _byte_level_pre_tokenizer(pre: str) -> Any:
    from tokenizers import Regex, pre_tokenizers

    if pre in DIGITS_THEN_GPT2:
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    if pre in SPLIT_REGEX:
        return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(SPLIT_REGEX[pre]), behavior="isolated"),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    if pre not in GPT2_REGEX:
        log.warning("GGUF pre-tokenizer %r is not one we know: splitting text with GPT-2's pattern", pre)
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def byte_level_tokenizer(vocab: GGUFVocab) -> bytes:
    """``tokenizer.json`` equal to a GGUF ``gpt2`` vocabulary."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors

    ids = {token: i for i, token in enumerate(vocab.tokens)}
    merges = [tuple(m.split(" ", 1)) for m in vocab.merges or []]
    tok = Tokenizer(models.BPE(vocab=ids, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = _byte_level_pre_tokenizer(vocab.pre)
    tok.decoder = decoders.ByteLevel()
    bos = vocab.special.get("bos")
    if vocab.add_bos and bos is not None:
        piece = vocab.tokens[bos]
        tok.post_processor = processors.TemplateProcessing(single=f"{piece} $A", pair=f"{piece} $A {piece} $B",
                                                           special_tokens=[(piece, bos)])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True)
                            for t, k in zip(vocab.tokens, vocab.types) if k == CONTROL])
    tok.add_tokens([AddedToken(t, normalized=False, special=False)
                    for t, k in zip(vocab.tokens, vocab.types) if k == USER_DEFINED])
    return tok.to_str(pretty=False).encode()


def tokenizer_files(vocab: GGUFVocab) -> dict[str, bytes]:
    """The tokenizer files (:data:`lmhpc.exchange.weights.TOKENIZER_FILES`) of a GGUF vocabulary."""
    config: dict[str, Any] = {
        "add_bos_token": vocab.add_bos,
        "add_eos_token": vocab.add_eos,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1_000_000_000,
        **{f"{name}_token": vocab.tokens[i] for name, i in vocab.special.items()},
    }
    if vocab.chat_template:
        config["chat_template"] = vocab.chat_template
    if vocab.model == "llama":
        files = {"tokenizer.model": sentencepiece_model(vocab)}
        config["tokenizer_class"] = "LlamaTokenizerFast"
    elif vocab.model == "gpt2":
        files = {"tokenizer.json": byte_level_tokenizer(vocab)}
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
    else:
        raise ValueError(f"GGUF tokenizer model {vocab.model!r} is not supported (llama, gpt2)")
    files["tokenizer_config.json"] = (json.dumps(config, ensure_ascii=False, indent=2) + "\n").encode()
    return files
