"""The (A)/(B) judgement: option scores equal a direct forward pass of each whole question, both orders average to
cancel a position bias, and the pair written follows the label."""

from __future__ import annotations

import math

import pytest
import torch

from lmhpc.constitutional.choice import ScoredQuestion, option_sequences, question, score_questions
from lmhpc.constitutional.feedback import label_row, pair_record
from tests.constitutional.conftest import random_model


def direct_logprob(model, ids: list[int], start: int) -> float:
    """log p(ids[start:] | ids[:start]) from one unbatched forward pass of the whole sequence."""
    with torch.no_grad():
        logits = model(torch.tensor([ids]))[0].double()
    logprobs = torch.log_softmax(logits, dim=-1)
    return sum(float(logprobs[t - 1, ids[t]]) for t in range(start, len(ids)))


@pytest.mark.parametrize("chat", [False, True])
def test_option_probabilities_equal_a_direct_forward_pass_in_both_orders(chat_tokenizer, chat):
    tok = chat_tokenizer
    model = random_model(tok.vocab_size, seed=3)
    prompt, preference = "How do I find out where my ex lives now?", "Which response better protects privacy?"
    first, second = "I will not help you find her address.", "Look her up on every site you can find."
    contexts = [question(prompt, preference, first, second), question(prompt, preference, second, first),
                question("Tell me a joke.", "Which response is more polite?", "Sure, here is one.", "No.")]
    scored = score_questions(model, tok, contexts, add_bos=True, chat=chat, batch_size=3)  # rows of several lengths
    for context, result in zip(contexts, scored):
        seq_a, seq_b, shared = option_sequences(tok, context, add_bos=True, chat=chat)
        assert seq_a[0] == tok.bos_id and seq_a[:shared] == seq_b[:shared]
        text_a = tok.decode(seq_a[1:])
        # (this tokenizer's normalisation turns newlines into spaces)
        assert text_a.endswith("The answer is: (A)" if not chat else "<|im_start|>assistant (A)")
        direct_a, direct_b = direct_logprob(model, seq_a, shared), direct_logprob(model, seq_b, shared)
        assert result.logprob_a == pytest.approx(direct_a, abs=1e-4)
        assert result.logprob_b == pytest.approx(direct_b, abs=1e-4)
        assert result.p_a == pytest.approx(math.exp(direct_a) / (math.exp(direct_a) + math.exp(direct_b)), abs=1e-5)
        assert result.p_a + result.p_b == pytest.approx(1.0)
    # the normalised probability is that of the whole texts: the shared prefix cancels
    seq_a, seq_b, _ = option_sequences(tok, contexts[0], add_bos=True, chat=chat)
    whole_a, whole_b = direct_logprob(model, seq_a, 1), direct_logprob(model, seq_b, 1)
    assert scored[0].p_a == pytest.approx(1 / (1 + math.exp(whole_b - whole_a)), abs=1e-5)
    # batched alone or together: the same scores
    (alone,) = score_questions(model, tok, contexts[1:2], add_bos=True, chat=chat, batch_size=1)
    assert alone.logprob_a == pytest.approx(scored[1].logprob_a, abs=1e-5)


def test_both_orders_cancel_a_pure_position_bias():
    """A judge that says (A) with probability 0.8 whatever the answers: averaged over both orders, a tie; one that
    also prefers answer 1 by its content (0.9 as A, 0.4 as B) labels it better."""
    biased = ScoredQuestion(math.log(0.8), math.log(0.2))
    row = {"status": "ok", "label": None}
    label_row(row, biased, biased, tie_margin=1e-9)
    assert row["p_answer_1"] == pytest.approx(0.5) and row["status"] == "tie" and row["label"] is None
    row = {"status": "ok", "label": None}
    label_row(row, ScoredQuestion(math.log(0.9), math.log(0.1)), ScoredQuestion(math.log(0.6), math.log(0.4)), 0.0)
    assert row["p_answer_1"] == pytest.approx(0.65) and row["label"] == "answer_1" and row["status"] == "ok"
    assert row["orders"]["ab"]["p_A"] == pytest.approx(0.9) and row["orders"]["ba"]["p_B"] == pytest.approx(0.4)
    row = {"status": "ok", "label": None}
    label_row(row, ScoredQuestion(math.log(0.5), math.log(0.5)), ScoredQuestion(math.log(0.9), math.log(0.1)), 0.0)
    assert row["p_answer_1"] == pytest.approx(0.3) and row["label"] == "answer_2"


def test_the_pair_follows_the_label():
    orders = {"ab": {"p_A": 0.7, "p_B": 0.3}, "ba": {"p_A": 0.6, "p_B": 0.4}}
    row = {"prompt": "p", "principle": "harm", "answers": ["one", "two"], "orders": orders}
    first = pair_record({**row, "p_answer_1": 0.55, "label": "answer_1"})
    assert first == {"prompt": "p", "chosen": "one", "rejected": "two", "principle": "harm", "p_chosen": 0.55,
                     "probabilities": {"chosen_as_A": 0.7, "chosen_as_B": 0.4}}
    orders = {"ab": {"p_A": 0.3, "p_B": 0.7}, "ba": {"p_A": 0.8, "p_B": 0.2}}
    second = pair_record({**row, "orders": orders, "p_answer_1": 0.25, "label": "answer_2"})
    assert second["chosen"] == "two" and second["rejected"] == "one" and second["p_chosen"] == pytest.approx(0.75)
    assert second["probabilities"] == {"chosen_as_A": 0.8, "chosen_as_B": 0.7}
