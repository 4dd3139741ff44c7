"""SFT data: the assistant-only loss mask token by token, bad records quarantined by reason, packing equal to
padding, and the SFT loss/metrics on a tiny model."""

from __future__ import annotations

import json

import pytest
import torch

from lmhpc.align.chat import collate, packed_rows, padded_rows, read_chat_files, tokenize_chat
from lmhpc.align.sft import sft_loss
from lmhpc.align.trainer import use_document_attention
from lmhpc.data.quarantine import Quarantine, read_quarantine
from lmhpc.exchange.tokenizer import load_tokenizer
from lmhpc.model.transformer import Transformer
from tests.align.conftest import CHAT_DATA, tiny_args

CONVERSATION = [
    {"role": "system", "content": "You are brief."},
    {"role": "user", "content": "What is two plus two?"},
    {"role": "assistant", "content": "two plus two is four."},
    {"role": "user", "content": "Reverse: river stone"},
    {"role": "assistant", "content": "stone river"},
]


@pytest.fixture(scope="module")
def tokenizer(chat_tokenizer):
    return load_tokenizer(chat_tokenizer)


def test_loss_mask_covers_exactly_the_assistant_turns(tokenizer):
    tokens, mask = tokenize_chat(tokenizer, CONVERSATION)
    assert len(tokens) == len(mask)
    im_start, im_end = tokenizer.token_id("<|im_start|>"), tokenizer.token_id("<|im_end|>")
    # walk the tokens: a run of mask=True starts right after "<|im_start|>assistant\n" and ends with "<|im_end|>\n"
    runs, current = [], []
    for tok, m in zip(tokens, mask):
        if m:
            current.append(tok)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    assert [tokenizer.decode(r) for r in runs] == ["two plus two is four.<|im_end|>\n", "stone river<|im_end|>\n"]
    for i, (tok, m) in enumerate(zip(tokens, mask)):
        if m and not mask[i - 1]:  # first token of an answer: preceded by the generation prompt
            prompt = tokenizer.decode(tokens[:i])
            assert prompt.endswith("<|im_start|>assistant\n")
        if tok == im_start:
            assert not m  # no turn opener is ever a loss token
        if tok == im_end:
            assert m == (tokenizer.decode(tokens[:i]).rsplit("<|im_start|>", 1)[1].startswith("assistant"))
    # the prompt part is encoded exactly as a generator encodes the prompt of the first answer
    prompt = tokenizer.apply_chat_template(CONVERSATION[:2], add_generation_prompt=True)
    assert tokens[:mask.index(True)] == tokenizer.encode(prompt)
    # the other runs are the rest of the rendered conversation (each segment is encoded on its own)
    whole = tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt=False)
    first, second = whole.split("two plus two is four.<|im_end|>\n")
    between, tail = second.split("stone river<|im_end|>\n")
    others, current = [], []
    for tok, m in zip(tokens, mask):
        if not m:
            current.append(tok)
        elif current:
            others.append(current)
            current = []
    assert [tokenizer.decode(r) for r in others] == [first, between] and tail == ""


def test_bad_records_are_counted_by_reason_and_quarantined(tmp_path, tokenizer):
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    lines = [
        json.dumps(good),
        "{not json",
        json.dumps({"text": "no messages"}),
        json.dumps({"messages": [{"role": "user"}]}),
        json.dumps({"messages": [{"role": "robot", "content": "beep"}, {"role": "assistant", "content": "x"}]}),
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]}),
        json.dumps({"messages": [{"role": "user", "content": "only a question"}]}),
        json.dumps({"messages": [{"role": "user", "content": "long " * 200}, {"role": "assistant", "content": "ok"}]}),
        "",
        json.dumps(good),
    ]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with Quarantine(tmp_path / "quarantine.jsonl") as q:
        data = read_chat_files([path], tokenizer, 64, q)
    assert data.records_in == 9 and len(data.examples) == 2
    assert data.quarantined == {"empty_content": 1, "invalid_json": 1, "missing_field": 2, "no_assistant_turn": 1,
                                "too_long": 1, "unknown_role": 1}
    entries = list(read_quarantine(tmp_path / "quarantine.jsonl"))
    assert sorted(e["reason"] for e in entries) == sorted(r for r, n in data.quarantined.items() for _ in range(n))
    assert {e["location"] for e in entries} >= {f"{path}:2", f"{path}:8"}
    assert [e.location for e in data.examples] == [f"{path}:1", f"{path}:10"]


def test_packed_loss_equals_the_padded_loss(tokenizer):
    data = read_chat_files([CHAT_DATA / "chat.jsonl"], tokenizer, 128, None)
    examples = data.examples[:9]
    torch.manual_seed(0)
    model = Transformer(tiny_args(vocab_size=512, max_seq_len=256))
    with torch.no_grad():  # sharpen attention so that a leak across documents would show
        for layer in model.layers.values():
            layer.attention.wq.weight.mul_(8)
            layer.attention.wk.weight.mul_(8)
    use_document_attention(model)
    rows = packed_rows(examples, 160, seed=1)
    assert len(rows) < len(examples) and all(len(r.lengths) >= 1 for r in rows)
    assert sum(len(r.lengths) for r in rows) == len(examples)
    packed = collate(rows, 0, packed=True)
    padded = collate(padded_rows(examples), 0, packed=False)
    with torch.no_grad():
        loss_packed, n_packed, m_packed = sft_loss(model, packed)
        loss_padded, n_padded, m_padded = sft_loss(model, padded)
    assert n_packed == n_padded == sum(sum(e.assistant[1:]) for e in examples)
    assert float(loss_packed) == pytest.approx(float(loss_padded), rel=1e-5)
    assert m_packed["mean_token_accuracy"] == m_padded["mean_token_accuracy"]
    assert m_packed["entropy"][0] == pytest.approx(m_padded["entropy"][0], rel=1e-5)
    assert m_packed["num_tokens"] == m_padded["num_tokens"] == sum(len(e.tokens) for e in examples)
    # and without the document mask the packed loss would differ: the test can fail
    plain = {k: v for k, v in packed.items() if k != "positions"}
    with torch.no_grad():
        leak = abs(float(sft_loss(model, plain)[0]) - float(loss_padded))
    assert leak > 100 * max(abs(float(loss_packed) - float(loss_padded)), 1e-6)


def test_sft_loss_is_cross_entropy_on_assistant_tokens(tokenizer):
    torch.manual_seed(2)
    model = Transformer(tiny_args(vocab_size=512))
    tokens, mask = tokenize_chat(tokenizer, CONVERSATION)
    batch = collate(padded_rows([type("E", (), {"tokens": tokens, "assistant": mask})()]), 0, packed=False)
    loss, n, metrics = sft_loss(model, batch)
    logits = model(batch["tokens"])[0, :-1].detach()
    targets = batch["tokens"][0, 1:]
    sel = torch.tensor(mask[1:])
    ce = torch.nn.functional.cross_entropy(logits[sel], targets[sel], reduction="sum")
    assert n == int(sel.sum()) and float(loss.detach()) == pytest.approx(float(ce.detach()), rel=1e-5)
    probs = torch.softmax(logits[sel], -1)
    entropy = float(-(probs * probs.log()).sum())
    assert metrics["entropy"][0] == pytest.approx(entropy, rel=1e-4) and metrics["entropy"][1] == n
    assert metrics["mean_token_accuracy"][0] == float((logits[sel].argmax(-1) == targets[sel]).sum())
