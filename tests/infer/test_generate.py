"""Generation's ends (EOS, stop strings, length), chat prompts, prompt encoding and batching."""

from __future__ import annotations

import pytest

from lmhpc.infer.generate import Generator, find_stop
from tests.infer.models import bigram_model, build, tiny_args

# "▁qui" "c" "k" "▁brown" "▁jumps" "▁over" "▁a" "▁lazy" in the fixture's tokenizer; then EOS (1)
CHAIN = ["▁qui", "c", "k", "▁brown", "▁jumps", "▁over", "▁a", "▁lazy"]


@pytest.fixture
def chain(sp_tokenizer) -> list[int]:
    ids = [sp_tokenizer.token_id(p) for p in CHAIN]
    assert None not in ids and len(set(ids)) == len(ids)
    return ids


def chain_generator(tokenizer, chain: list[int], extra: dict[int, int] | None = None) -> Generator:
    """Greedy decoding walks ``chain`` then emits EOS."""
    successor = {a: b for a, b in zip(chain, chain[1:])} | {chain[-1]: tokenizer.eos_id} | (extra or {})
    return Generator(bigram_model(successor), tokenizer)


def test_eos_ends_a_row_and_is_kept_in_the_tokens_only(sp_tokenizer, chain):
    [c] = chain_generator(sp_tokenizer, chain).generate([chain[:1]], max_new_tokens=20, logprobs=True)
    assert c.token_ids == chain[1:] + [sp_tokenizer.eos_id]
    assert c.text == "ck brown jumps over a lazy"
    assert c.finish_reason == "eos"
    assert len(c.logprobs) == len(c.token_ids)


def test_length_ends_a_row(sp_tokenizer, chain):
    [c] = chain_generator(sp_tokenizer, chain).generate([chain[:1]], max_new_tokens=3)
    assert (c.token_ids, c.text, c.finish_reason) == (chain[1:4], "ck brown", "length")


@pytest.mark.parametrize("stop,tokens,text", [
    (["jumps o"], 5, "ck brown "),  # completed by "▁over": the tokens keep it, the text is cut before the stop
    (["k br"], 3, "c"),  # spans two tokens
    (["lazy", "over", "nothing"], 5, "ck brown jumps "),  # the earliest of several
    (["ck"], 2, ""),
])
def test_stop_strings_end_and_trim(sp_tokenizer, chain, stop, tokens, text):
    [c] = chain_generator(sp_tokenizer, chain).generate([chain[:1]], max_new_tokens=20, stop=stop)
    assert (c.token_ids, c.text, c.finish_reason) == (chain[1:1 + tokens], text, "stop")


def test_a_stop_string_in_the_prompt_does_not_count(sp_tokenizer, chain):
    [c] = chain_generator(sp_tokenizer, chain).generate([chain[:4]], max_new_tokens=20, stop=["brown"])
    assert c.finish_reason == "eos" and c.text == " jumps over a lazy"


def test_rows_of_a_batch_end_independently(sp_tokenizer, chain):
    gen = chain_generator(sp_tokenizer, chain)
    a, b, c = gen.generate([chain[:1], chain[:6], chain[:2]], max_new_tokens=3, stop=["jumps"])
    assert (a.finish_reason, a.token_ids) == ("length", chain[1:4])
    assert (b.finish_reason, b.token_ids) == ("eos", chain[6:] + [sp_tokenizer.eos_id])
    assert (c.finish_reason, c.text) == ("stop", "k brown ")


def test_find_stop():
    assert find_stop("a stop b halt", ["halt", "stop"]) == 2
    assert find_stop("abc", ["x", ""]) is None
    assert find_stop("stop stop", ["stop"], start=1) == 5


def test_chat_prompts_use_the_chatml_template_and_end_at_im_end(sp_tokenizer, chain):
    im_end = sp_tokenizer.token_id("<|im_end|>")
    gen = chain_generator(sp_tokenizer, chain)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    rendered = "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert sp_tokenizer.apply_chat_template(messages) == rendered
    assert gen.encode(messages, chat=True) == sp_tokenizer.encode(rendered)
    assert gen.encode("hi", chat=True) == sp_tokenizer.encode(
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    # the assistant turn ("...assistant" ends in "t") walks the chain, then the end of the turn
    last = gen.encode("hi", chat=True)[-1]
    gen = chain_generator(sp_tokenizer, chain[:-1] + [im_end, chain[-1]], {last: chain[0]})
    [c] = gen.generate(["hi"], chat=True, max_new_tokens=20)
    assert (c.token_ids[-1], c.finish_reason, c.text) == (im_end, "eos", " quick brown jumps over a")
    [plain] = gen.generate([gen.encode("hi", chat=True)], max_new_tokens=20)  # not in chat mode: goes on
    assert plain.finish_reason == "eos" and plain.token_ids[-2:] == [chain[-1], sp_tokenizer.eos_id]


def test_prompt_encoding(sp_tokenizer):
    gen = Generator(build(tiny_args()), sp_tokenizer)
    ids = sp_tokenizer.encode("the quick brown fox")
    assert gen.encode("the quick brown fox") == ids
    assert gen.encode("the quick brown fox", add_bos=True) == [sp_tokenizer.bos_id, *ids]
    assert gen.encode([7, 8, 9]) == [7, 8, 9]
    assert gen.end_ids(chat=False) == {sp_tokenizer.eos_id}
    assert gen.end_ids(chat=True) == {sp_tokenizer.eos_id, sp_tokenizer.token_id("<|im_end|>")}


def test_batch_size_splits_without_changing_greedy_results(sp_tokenizer):
    gen = Generator(build(tiny_args(n_kv_heads=2)), sp_tokenizer)
    prompts = ["the quick brown fox", "a", "seven tired wizards quietly brew", "cold grey seas"]
    together = gen.generate(prompts, max_new_tokens=12)
    split = gen.generate(prompts, max_new_tokens=12, batch_size=3)
    assert [c.token_ids for c in together] == [c.token_ids for c in split]
    assert [c.prompt_ids for c in together] == [sp_tokenizer.encode(p) for p in prompts]


def test_bad_requests_are_refused(sp_tokenizer):
    gen = Generator(build(tiny_args(max_seq_len=16)), sp_tokenizer)
    with pytest.raises(ValueError, match="max_seq_len"):
        gen.generate([list(range(10))], max_new_tokens=8)
    with pytest.raises(ValueError, match="no tokens"):
        gen.generate([""], max_new_tokens=2)
    with pytest.raises(ValueError, match="max_new_tokens"):
        gen.generate(["a"], max_new_tokens=0)
