#!/usr/bin/env python
"""Writes ``chat.jsonl``: small conversations in the sft stage's chat format, made by code (no download).

Run from anywhere: ``python data/align/chat/generate.py``; the output is the same on every run (seeded).
The tasks are simple and checkable (arithmetic in words, ordering numbers, reversing and counting words,
greetings, short definitions of the project's own vocabulary), so a tiny model's loss visibly falls on them.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent / "chat.jsonl"
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"]
WORDS = ["river", "stone", "bread", "market", "bridge", "coffee", "lantern", "garden", "window", "harbor", "pencil",
         "candle", "meadow", "thunder", "violin", "orchard"]
SYSTEMS = ["You are a helpful assistant.", "You are a concise assistant. Answer in one sentence.",
           "You answer questions about numbers and words."]
TERMS = {
    "a checkpoint": "a saved copy of the model and optimizer state from which training can resume.",
    "a tokenizer": "a program that turns text into a sequence of token ids and back.",
    "fine-tuning": "further training of a pretrained model on a smaller, focused data set.",
    "a learning rate": "the size of each optimizer update step.",
    "a batch": "a group of examples processed together in one training step.",
    "perplexity": "the exponential of the average negative log-likelihood per token.",
    "an epoch": "one full pass over the training data.",
    "a gradient": "the direction in which a loss increases fastest with respect to the parameters.",
}


def arithmetic(rng: random.Random) -> list[dict[str, str]]:
    a, b = rng.randint(0, 10), rng.randint(0, 10)
    if rng.random() < 0.5:
        x, y = NUMBER_WORDS[a], NUMBER_WORDS[b]
        q, ans = f"What is {x} plus {y}?", f"{x} plus {y} is {NUMBER_WORDS[a + b]}."
    else:
        a, b = max(a, b), min(a, b)
        q, ans = f"What is {a} minus {b}?", f"{a} minus {b} is {a - b}."
    return [{"role": "user", "content": q}, {"role": "assistant", "content": ans}]


def sort_numbers(rng: random.Random) -> list[dict[str, str]]:
    xs = rng.sample(range(1, 60), rng.randint(3, 6))
    return [{"role": "user", "content": "Sort these numbers from smallest to largest: " + ", ".join(map(str, xs))},
            {"role": "assistant", "content": ", ".join(map(str, sorted(xs)))}]


def reverse_words(rng: random.Random) -> list[dict[str, str]]:
    ws = rng.sample(WORDS, rng.randint(2, 5))
    return [{"role": "user", "content": "Reverse the order of these words: " + " ".join(ws)},
            {"role": "assistant", "content": " ".join(reversed(ws))}]


def count_words(rng: random.Random) -> list[dict[str, str]]:
    ws = [rng.choice(WORDS) for _ in range(rng.randint(1, 9))]
    n = len(ws)
    return [{"role": "user", "content": f"How many words are in: {' '.join(ws)}"},
            {"role": "assistant", "content": f"There {'is' if n == 1 else 'are'} {NUMBER_WORDS[n]} "
                                             f"word{'' if n == 1 else 's'}."}]


def define(rng: random.Random) -> list[dict[str, str]]:
    term = rng.choice(sorted(TERMS))
    return [{"role": "user", "content": f"What is {term}?"},
            {"role": "assistant", "content": f"{term[0].upper()}{term[1:]} is {TERMS[term]}"}]


def greeting(rng: random.Random) -> list[dict[str, str]]:
    name = rng.choice(["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "John"])
    return [{"role": "user", "content": f"Hello, my name is {name}."},
            {"role": "assistant", "content": f"Hello {name}, nice to meet you. How can I help?"}]


TASKS = [arithmetic, sort_numbers, reverse_words, count_words, define, greeting]


def conversation(rng: random.Random) -> dict:
    messages: list[dict[str, str]] = []
    if rng.random() < 0.3:
        messages.append({"role": "system", "content": rng.choice(SYSTEMS)})
    for _ in range(2 if rng.random() < 0.2 else 1):  # some conversations have two exchanges
        messages += rng.choice(TASKS)(rng)
    return {"messages": messages}


def main() -> None:
    rng = random.Random(20261204)
    rows = [conversation(rng) for _ in range(240)]
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"{len(rows)} conversations → {OUT}")


if __name__ == "__main__":
    main()
