"""A Hugging Face tokenizer (``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json``) equal to
a sentencepiece BPE model, so exported models can carry it.

The fast tokenizer is a byte-fallback BPE whose merges are read off the sentencepiece vocabulary (each piece
is the merge of two shorter pieces, ranked by the piece's id), with sentencepiece's whitespace handling:
spaces become ``▁``, and one is prepended to the text when the model adds a dummy prefix. User tokens are
added tokens matched in the normalised text, so they split it exactly where sentencepiece splits it. Control
tokens (``<s>``, ``</s>``, ...) are special added tokens: sentencepiece never produces them from text, while
Hugging Face tokenizers match them when they are written literally in the text (as for every Llama-style
tokenizer); everywhere else the two give the same ids.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from sentencepiece import sentencepiece_model_pb2 as model_pb2

from lmhpc.fsutil import write_text

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
SPACE = "\u2581"


def read_proto(model_path: Path) -> model_pb2.ModelProto:
    proto = model_pb2.ModelProto()
    proto.ParseFromString(Path(model_path).read_bytes())
    return proto


def bpe_merges(proto: model_pb2.ModelProto) -> list[tuple[str, str]]:
    """Merges that rebuild every learned piece from two shorter ones, in the order of the pieces' ids."""
    vocab = {p.piece: i for i, p in enumerate(proto.pieces) if p.type == NORMAL}
    merges: list[tuple[int, int, int, str, str]] = []
    for piece, rank in vocab.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                merges.append((rank, vocab[left], vocab[right], left, right))
    merges.sort()
    return [(left, right) for _, _, _, left, right in merges]


def tokenizer_json(proto: model_pb2.ModelProto, add_bos: bool = True) -> dict[str, Any]:
    """The content of ``tokenizer.json`` for a sentencepiece BPE model."""
    if proto.trainer_spec.model_type != model_pb2.TrainerSpec.BPE:
        raise ValueError("only BPE models can be exported as a Hugging Face fast tokenizer")
    pieces = list(proto.pieces)
    dummy_prefix = proto.normalizer_spec.add_dummy_prefix
    specials = {UNKNOWN, CONTROL}
    added = [
        {"id": i, "content": p.piece, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for i, p in enumerate(pieces) if p.type in specials
    ]
    user = [p.piece for p in pieces if p.type == USER_DEFINED]
    # user tokens are cut out of the normalised text (after the one dummy prefix), where sentencepiece cuts them
    pre_tokenizer = None
    if user:
        pattern = "|".join(re.escape(u) for u in sorted(user, key=len, reverse=True))
        pre_tokenizer = {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False}
    normalizers: list[dict[str, Any]] = []
    if dummy_prefix:
        normalizers.append({"type": "Prepend", "prepend": SPACE})
    normalizers.append({"type": "Replace", "pattern": {"String": " "}, "content": SPACE})
    decoders: list[dict[str, Any]] = [
        {"type": "Replace", "pattern": {"String": SPACE}, "content": " "},
        {"type": "ByteFallback"},
        {"type": "Fuse"},
    ]
    if dummy_prefix:
        decoders.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    bos = pieces[proto.trainer_spec.bos_id].piece if proto.trainer_spec.bos_id >= 0 else None
    post: dict[str, Any] | None = None
    if add_bos and bos is not None:
        bos_id = proto.trainer_spec.bos_id
        post = {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}},
        }
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": normalizers},
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post,
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": pieces[proto.trainer_spec.unk_id].piece,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": True,
            "ignore_merges": bool(user),  # a cut-out user token is looked up whole
            "vocab": {p.piece: i for i, p in enumerate(pieces)},
            "merges": [[left, right] for left, right in bpe_merges(proto)],
        },
    }


def special_tokens(proto: model_pb2.ModelProto) -> dict[str, Any]:
    """``special_tokens_map.json``: bos, eos, unk, pad and the other control tokens. User tokens are ordinary
    pieces cut out by the pre-tokenizer (listing them here would make transformers match them before the
    dummy prefix, unlike sentencepiece)."""
    spec = proto.trainer_spec
    pieces = proto.pieces
    out: dict[str, Any] = {}
    for name, idx in (("bos_token", spec.bos_id), ("eos_token", spec.eos_id), ("unk_token", spec.unk_id),
                      ("pad_token", spec.pad_id)):
        if idx >= 0:
            out[name] = pieces[idx].piece
    extra = [p.piece for i, p in enumerate(pieces)
             if p.type == CONTROL and i not in (spec.bos_id, spec.eos_id, spec.pad_id)]
    if extra:
        out["additional_special_tokens"] = extra
    return out


def write_hf_tokenizer(model_path: Path, out_dir: Path, model_max_length: int = 1_000_000_000) -> list[Path]:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json`` beside the model
    (``tokenizer_class`` PreTrainedTokenizerFast: ``AutoTokenizer.from_pretrained(out_dir)`` runs ``tokenizer.json``
    as written; transformers 5 rebuilds a LlamaTokenizerFast's pre-tokenizer and would split user tokens)."""
    proto = read_proto(model_path)
    out_dir = Path(out_dir)
    spec = proto.trainer_spec
    added = tokenizer_json(proto)["added_tokens"]
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": True,
        "add_eos_token": False,
        "add_prefix_space": None,
        "legacy": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "sp_model_kwargs": {},
        "vocab_file": Path(model_path).name,
        "added_tokens_decoder": {
            str(t["id"]): {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
            for t in added
        },
        **special_tokens(proto),
    }
    if spec.pad_id < 0:
        config["pad_token"] = None
    paths = [out_dir / "tokenizer.json", out_dir / "tokenizer_config.json", out_dir / "special_tokens_map.json"]
    write_text(paths[0], json.dumps(tokenizer_json(proto), ensure_ascii=False, indent=1) + "\n")
    write_text(paths[1], json.dumps(config, ensure_ascii=False, indent=2) + "\n")
    write_text(paths[2], json.dumps(special_tokens(proto), ensure_ascii=False, indent=2) + "\n")
    return paths
