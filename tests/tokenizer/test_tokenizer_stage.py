"""The tokenizer stage: what the model promises (byte fallback, round trip, special tokens, llama.cpp and
Hugging Face and Megatron compatibility), the sample it was trained on, determinism, and clear failures."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import sentencepiece as spm
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from lmhpc.config import load_config
from lmhpc.data.documents import Document
from lmhpc.runner import run_stage
from lmhpc.tokenizer.hf_export import BYTE, CONTROL, NORMAL, USER_DEFINED, read_proto
from tests.helpers import import_peer
from tests.tokenizer.corpus import TOKENIZER_SECTION, config_data, write_config, write_dedup_output

SPACE_SYMBOL = "\u2581"


@pytest.fixture(scope="module")
def sp(trained_run) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(trained_run / "tokenizer" / "tokenizer.model"))


@pytest.fixture(scope="module")
def hf(trained_run):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(trained_run / "tokenizer" / "tokenizer.json"))


any_text = st.text(alphabet=st.characters(codec="utf-8", exclude_characters=SPACE_SYMBOL), max_size=60)
CONTROL_STRINGS = ("<unk>", "<s>", "</s>", "<pad>", "<|endoftext|>")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=any_text)
def test_round_trip_on_arbitrary_unicode(sp, text):
    ids = sp.encode(text)
    assert sp.decode(ids) == text
    assert sp.unk_id() not in ids  # byte fallback: nothing is ever unknown


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=60))
def test_round_trip_on_arbitrary_bytes(sp, data):
    """Any byte string that is text (valid UTF-8, control bytes and NUL included) comes back byte for byte."""
    text = data.decode("utf-8", errors="ignore")
    assert sp.decode(sp.encode(text)).encode("utf-8") == text.encode("utf-8")


def test_unseen_characters_become_their_utf8_bytes(sp):
    for char in ("\U0001f600", "\x00", "\U000e0001", "\u0b95"):
        pieces = [p for p in sp.encode(char, out_type=str) if p != SPACE_SYMBOL]
        assert pieces == [f"<0x{b:02X}>" for b in char.encode("utf-8")]
        assert sp.decode(sp.encode(char)) == char


def test_the_space_symbol_is_the_one_lossy_character(sp):
    assert sp.decode(sp.encode(f"a{SPACE_SYMBOL}b")) == "a b"


def test_piece_types_and_ids_for_llama_cpp(trained_run, sp):
    proto = read_proto(trained_run / "tokenizer" / "tokenizer.model")
    assert proto.trainer_spec.byte_fallback
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, 3)
    assert [sp.id_to_piece(i) for i in range(4)] == ["<unk>", "<s>", "</s>", "<pad>"]
    types = {p.piece: p.type for p in proto.pieces}
    assert types["<|endoftext|>"] == CONTROL
    assert types["<|im_start|>"] == types["<|im_end|>"] == USER_DEFINED
    byte_pieces = [p.piece for p in proto.pieces if p.type == BYTE]
    assert byte_pieces == [f"<0x{b:02X}>" for b in range(256)]  # <0x0A> is llama.cpp's newline token
    assert sp.get_piece_size() == 1000
    assert sum(p.type == NORMAL for p in proto.pieces) == 1000 - 4 - 3 - 256
    assert sp.encode("1234567", out_type=str)[-7:] == list("1234567")  # digits split


def test_user_tokens_match_in_text_control_tokens_do_not(sp):
    ids = sp.encode("<|im_start|>user hi<|im_end|>")
    assert sp.piece_to_id("<|im_start|>") in ids and sp.piece_to_id("<|im_end|>") in ids
    assert sp.piece_to_id("<|endoftext|>") not in sp.encode("<|endoftext|>")


def test_hugging_face_tokenizer_matches_sentencepiece(sp, hf, corpus_docs):
    chat = "<|im_start|>user\nhi <|im_end|>\n<|im_start|>assistant\n  hello<|im_end|>"
    texts = [d.text for d in corpus_docs] + ["  two spaces", "tab\tand\nnewline", "x" * 5, chat, "a<|im_end|>b", ""]
    for text in texts:
        assert hf.encode(text, add_special_tokens=False).ids == sp.encode(text), text[:80]
        assert hf.decode(sp.encode(text), skip_special_tokens=False) == text
    assert hf.encode("hello").ids == [sp.bos_id()] + sp.encode("hello")  # add_bos_token, as in the config
    # the documented difference: control tokens written in the text are matched by HF only
    assert hf.encode("<s>", add_special_tokens=False).ids == [sp.bos_id()]
    assert sp.bos_id() not in sp.encode("<s>")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(st.one_of(any_text, st.sampled_from(["<|im_start|>", "<|im_end|>", " ", "  ", "\n", "the"])),
                      max_size=6))
def test_hugging_face_tokenizer_matches_on_arbitrary_text(sp, hf, parts):
    text = "".join(parts)
    assume(not any(c in text for c in CONTROL_STRINGS))
    assert hf.encode(text, add_special_tokens=False).ids == sp.encode(text)


def test_hf_config_files(trained_run):
    folder = trained_run / "tokenizer"
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert (config["bos_token"], config["eos_token"], config["unk_token"], config["pad_token"]) == (
        "<s>", "</s>", "<unk>", "<pad>")
    special = json.loads((folder / "special_tokens_map.json").read_text())
    assert special["additional_special_tokens"] == ["<|endoftext|>"]


def test_transformers_autotokenizer_encodes_as_sentencepiece(trained_run, sp):
    transformers = import_peer("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(trained_run / "tokenizer"))
    text = "<|im_start|>user\nHow are you?<|im_end|>\n  def f(x):\n    return 42"
    assert tok.encode(text, add_special_tokens=False) == sp.encode(text)


def test_megatron_loads_the_tokenizer(trained_run, sp):
    from megatron.core.tokenizers import MegatronTokenizer

    tok = MegatronTokenizer.from_pretrained(str(trained_run / "tokenizer" / "tokenizer.model"))
    assert tok.vocab_size == sp.get_piece_size()
    assert tok.eod == sp.eos_id()
    assert list(tok.tokenize("def f(x):\n    return 42")) == sp.encode("def f(x):\n    return 42")


def test_sample_is_recorded_weighted_and_held_out(trained_run, corpus_docs):
    stats = json.loads((trained_run / "tokenizer" / "stats.json").read_text())
    sample = json.loads((trained_run / "tokenizer" / "sample.json").read_text())
    ids = json.loads((trained_run / "tokenizer" / "sample_ids.json").read_text())
    assert not set(ids["train"]) & set(ids["heldout"])
    by_source = sample["by_source"]
    assert set(by_source) == {"code", "prose", "license"}
    assert sample["bytes"] == sum(r["bytes"] for r in by_source.values())
    assert sample["bytes"] >= 600_000 * 0.99  # the requested 0.6 MB (the last document may go over)
    # prose (weight 2) has less text than its share: it gives all but its held-out part; code and license
    # (weight 1 each) share the rest equally
    prose_text = sum(len(d.text.encode()) for d in corpus_docs if d.source == "prose")
    assert by_source["prose"]["bytes"] + by_source["prose"]["heldout_bytes"] == prose_text
    assert abs(by_source["code"]["bytes"] - by_source["license"]["bytes"]) < 0.05 * by_source["code"]["bytes"]
    assert sum(r["bytes"] for r in sample["by_language"].values()) == sample["bytes"]
    assert {"ja", "zh", "ru", "unknown", "en"} <= set(sample["by_language"])
    assert stats["sample"]["docs"] == len(ids["train"])


def test_analysis_in_stats(trained_run):
    stats = json.loads((trained_run / "tokenizer" / "stats.json").read_text())
    analysis = stats["analysis"]
    assert set(analysis["by_source"]) == {"code", "prose", "license"}
    for row in list(analysis["by_source"].values()) + list(analysis["by_language"].values()):
        assert row["tokens"] > 0 and row["bytes_per_token"] > 0 and 0 < row["vocab_used"] <= 1
        assert 0 <= row["byte_fallback_rate"] <= 1 and len(row["top_tokens"]) <= 5
    langs = analysis["by_language"]
    assert langs["zh"]["byte_fallback_rate"] > langs["en"]["byte_fallback_rate"]  # CJK is mostly bytes here
    for source, row in analysis["per_source_tokenizers"].items():
        assert row["own_bytes_per_token"] > 0 and row["main_vs_own"] > 0, source
    assert (trained_run / "tokenizer" / "analysis" / "code.model").exists()
    assert "| source:prose |" in (trained_run / "tokenizer" / "analysis.md").read_text()


def test_same_model_whatever_the_readers(tmp_path, trained_run):
    """Training again with 2 reader processes gives the byte-identical model."""
    analysis = {**TOKENIZER_SECTION["analysis"], "per_source_tokenizers": False}
    data = config_data(tmp_path / "runs", tokenizer={"read_workers": 2, "analysis": analysis})
    cfg = load_config(write_config(tmp_path / "c.yaml", data))
    shutil.copytree(trained_run / "dedup", cfg.run_dir / "dedup")
    assert run_stage(cfg, "tokenizer") == 0
    for name in ("sample_ids.json", "tokenizer.model", "tokenizer.vocab", "tokenizer.json"):
        assert (cfg.run_dir / "tokenizer" / name).read_bytes() == (trained_run / "tokenizer" / name).read_bytes()


def test_vocab_too_small_for_the_characters_fails_clearly(tmp_path, corpus_docs, caplog):
    data = config_data(tmp_path / "runs", tokenizer={"vocab_size": 300, "character_coverage": 1.0,
                                                     "user_tokens": [], "control_tokens": []})
    cfg = load_config(write_config(tmp_path / "c.yaml", data))
    write_dedup_output(cfg.run_dir, corpus_docs, shards=1)
    with caplog.at_level(logging.ERROR):
        assert run_stage(cfg, "tokenizer") == 1
    assert "distinct characters" in caplog.text and "character_coverage" in caplog.text
    assert not (cfg.run_dir / "tokenizer" / "DONE").exists()


def test_config_validation(tmp_path):
    from lmhpc.config import ConfigError

    for section, match in (
        ({"tokenizer": {"vocab_size": 200}}, r"tokenizer\.vocab_size"),
        ({"tokenizer": {"user_tokens": ["<a>", "<a>"]}}, r"tokenizer\.user_tokens"),
        ({"tokenizer": {"user_tokens": ["has space"]}}, r"tokenizer\.user_tokens\[0\]"),
        ({"tokenizer": {"sample_mb": 0}}, r"tokenizer\.sample_mb"),
        ({"tokenize": {"batch_docs": 0}}, r"tokenize\.batch_docs"),
        ({"tokenizer": {"vocab_size": 70000}, "tokenize": {"dtype": "uint16"}}, r"tokenize\.dtype"),
    ):
        path = write_config(tmp_path / "bad.yaml", config_data(tmp_path / "runs", **section))
        with pytest.raises(ConfigError, match=match):
            load_config(path)


def test_a_one_document_source_is_trained_on_not_held_out(tmp_path, corpus_docs):
    analysis = {**TOKENIZER_SECTION["analysis"], "per_source_tokenizers": False}
    cfg = load_config(write_config(tmp_path / "c.yaml", config_data(tmp_path / "runs",
                                                                       tokenizer={"analysis": analysis})))
    tiny = Document(id="tiny/0", text="A single small document from a source of its own.", source="tiny")
    write_dedup_output(cfg.run_dir, [*corpus_docs, tiny], shards=2)
    assert run_stage(cfg, "tokenizer") == 0
    sample = json.loads((cfg.run_dir / "tokenizer" / "sample.json").read_text())
    assert sample["by_source"]["tiny"]["docs"] == 1 and sample["by_source"]["tiny"]["heldout_bytes"] == 0
    assert "tiny/0" in json.loads((cfg.run_dir / "tokenizer" / "sample_ids.json").read_text())["train"]
