"""``lmhpc generate MODEL --prompt TEXT``: complete prompts with a model, for a person at a terminal.

MODEL is anything :func:`lmhpc.exchange.load_model` reads (a pretrain stage folder, a checkpoint step, a
consolidated or Hugging Face folder, a .gguf file). Without ``--prompt`` the prompt is read from stdin.
With ``--speculative DRAFT`` (a model with the same vocabulary) or ``--draft-layers N`` (the model's first N
layers) decoding is speculative: same output distribution, greedy output identical; the acceptance rate and
tokens/s go to stderr. With ``--medusa HEADS`` (a medusa stage folder) the heads propose a tree of
continuations that the model verifies in one forward: greedy output identical, sampling by typical
acceptance. ``--compile``: decoding steps through ``torch.compile`` over a static KV cache.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

DTYPES = ("float32", "bfloat16", "float16")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lmhpc generate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model folder or .gguf file")
    p.add_argument("--prompt", action="append", default=None,
                   help="prompt text (repeat for a batch; default: read one prompt from stdin)")
    p.add_argument("--chat", action="store_true",
                   help="each prompt is a user message, rendered with the tokenizer's chat template")
    p.add_argument("--system", default=None, help="with --chat: a system message before each prompt")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    p.add_argument("--top-k", type=int, default=0, help="0: no top-k filtering")
    p.add_argument("--top-p", type=float, default=1.0, help="1: no nucleus filtering")
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--seed", type=int, default=None, help="seed of the sampling (same seed, same text)")
    p.add_argument("--bos", action="store_true", help="begin each prompt with the tokenizer's BOS token")
    p.add_argument("--tokenizer", default=None, help="take the tokenizer from this folder or file")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=DTYPES, default="float32")
    draft = p.add_mutually_exclusive_group()
    draft.add_argument("--speculative", metavar="DRAFT", default=None,
                       help="speculative decoding with this draft model (same vocabulary)")
    draft.add_argument("--draft-layers", type=int, default=None, metavar="N",
                       help="speculative decoding with the model's first N layers as the draft")
    draft.add_argument("--medusa", metavar="HEADS", default=None,
                       help="Medusa decoding with the heads of this medusa stage folder")
    draft.add_argument("--compile", action="store_true",
                       help="compile the decoding step (torch.compile over a static KV cache)")
    p.add_argument("--num-draft", type=int, default=4, help="tokens the draft proposes per round (default 4)")
    p.add_argument("--tree", default=None,
                   help="with --medusa: candidate tree, paths like '0;1;0,0' or 'chain:3' (default: a 6-node tree)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object per completion (text, token ids, finish reason, log-probs)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Load the model, generate, print the completions; 0 on success, 2 on a bad argument or model."""
    args = build_parser().parse_args(argv)
    prompts = args.prompt if args.prompt is not None else [sys.stdin.read()]
    import torch

    from lmhpc.exchange import load_model
    from lmhpc.infer.generate import Generator

    try:
        loaded = load_model(args.model, device=args.device, dtype=getattr(torch, args.dtype),
                            tokenizer=args.tokenizer)
    except (FileNotFoundError, ValueError) as e:
        print(f"lmhpc generate: {e}", file=sys.stderr)
        return 2
    if args.chat and args.system is not None:
        prompts = [[{"role": "system", "content": args.system}, {"role": "user", "content": p}] for p in prompts]
    common = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_k": args.top_k,
              "top_p": args.top_p, "stop": args.stop, "seed": args.seed, "chat": args.chat, "add_bos": args.bos,
              "logprobs": args.json}
    try:
        if args.tree is not None and args.medusa is None:
            raise ValueError("--tree goes with --medusa")
        if args.medusa is not None:
            completions = _medusa(args, loaded, prompts, common)
        elif args.speculative is None and args.draft_layers is None:
            completions = Generator(loaded.model, loaded.tokenizer, compile=args.compile).generate(
                prompts, repetition_penalty=args.repetition_penalty, **common)
        else:
            completions = _speculative(args, loaded, prompts, common)
    except (FileNotFoundError, ValueError) as e:
        print(f"lmhpc generate: {e}", file=sys.stderr)
        return 2
    for i, c in enumerate(completions):
        if args.json:
            print(json.dumps({"prompt": i, "text": c.text, "finish_reason": c.finish_reason,
                              "token_ids": c.token_ids, "logprobs": c.logprobs}))
        else:
            if len(completions) > 1:
                print(f"--- {i} ({c.finish_reason})")
            print(c.text)
    return 0


def _speculative(args: argparse.Namespace, loaded: Any, prompts: list, common: dict[str, Any]) -> list:
    """Completions by speculative decoding, its figures printed to stderr."""
    import torch

    from lmhpc.exchange import load_model
    from lmhpc.infer.speculative import SpeculativeGenerator, truncated_draft

    if args.repetition_penalty != 1.0:
        raise ValueError("speculative decoding takes no --repetition-penalty")
    if args.draft_layers is not None:
        draft = truncated_draft(loaded.model, args.draft_layers)
    else:
        draft = load_model(args.speculative, device=args.device, dtype=getattr(torch, args.dtype)).model
    spec = SpeculativeGenerator(loaded.model, draft, loaded.tokenizer, num_draft=args.num_draft)
    completions = spec.generate(prompts, **common)
    s = spec.last_stats
    print(f"speculative: {s.accepted}/{s.proposed} drafts accepted ({100 * s.acceptance_rate:.0f}%), "
          f"{s.tokens_per_round:.2f} tokens per target forward, {s.tokens_per_second:.1f} tokens/s", file=sys.stderr)
    return completions


def _medusa(args: argparse.Namespace, loaded: Any, prompts: list, common: dict[str, Any]) -> list:
    """Completions by Medusa decoding, its figures printed to stderr."""
    from lmhpc.medusa.decode import MedusaGenerator
    from lmhpc.medusa.heads import load_heads
    from lmhpc.medusa.tree import DEFAULT_TREE, parse_tree

    if args.repetition_penalty != 1.0:
        raise ValueError("Medusa decoding takes no --repetition-penalty")
    heads = load_heads(args.medusa, loaded.model)
    tree = parse_tree(args.tree) if args.tree is not None else DEFAULT_TREE
    gen = MedusaGenerator(loaded.model, heads, loaded.tokenizer, tree=tree)
    completions = gen.generate(prompts, **common)
    s = gen.last_stats
    print(f"medusa: {s.accepted} head tokens accepted in {s.rounds} forwards, {s.tokens_per_round:.2f} tokens per "
          f"forward, {s.tokens_per_second:.1f} tokens/s", file=sys.stderr)
    return completions
