"""Medusa decoding: the heads propose a tree of continuations, the model verifies it in one forward.

    gen = MedusaGenerator(model, heads, tokenizer)            # heads: lmhpc.medusa.heads.load_heads(folder, model)
    [c] = gen.generate(["Once upon a time"], max_new_tokens=64)
    gen.last_stats.tokens_per_round

Each round: the root (the model's own next token, known from the last round) and the tree's nodes (each head's
top candidates, :mod:`lmhpc.medusa.tree`) go through the model in one forward with a tree attention mask over
the KV cache; the longest path whose every token the model accepts is kept (its slots moved into place,
:meth:`InferenceCache.keep`), and the model's choice after its last token is the next root, whose hidden
state feeds the heads for the next tree. Greedy (temperature 0): a node is accepted iff it is the model's
argmax after its parent, so the output is plain greedy's token for token. Sampling: typical acceptance
(Medusa's ``posterior_threshold`` ε and ``posterior_alpha`` δ: a node is accepted when its probability under
the model's distribution after its parent exceeds min(ε, δ·exp(−entropy))); the root is drawn from the
model's distribution. Typical acceptance keeps plausible tokens rather than the exact distribution (as in
the Medusa paper); speculative decoding (:mod:`lmhpc.infer.speculative`) is the exact one. Batch 1:
prompts are decoded one after another.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import nullcontext

import torch

from lmhpc.exchange.tokenizer import TextTokenizer
from lmhpc.infer.generate import Completion, Generator, Prompt, _Row
from lmhpc.infer.layout import TransposedWeights
from lmhpc.infer.routing import no_token_dropping
from lmhpc.infer.sampling import SamplingParams
from lmhpc.infer.speculative import SpeculativeStats, probabilities
from lmhpc.medusa.heads import MedusaHeads, captured_hidden, head_logits
from lmhpc.medusa.tree import DEFAULT_TREE, Tree, build_tree
from lmhpc.model.cache import InferenceCache
from lmhpc.model.transformer import Transformer

log = logging.getLogger(__name__)


class MedusaGenerator:
    """Generates with ``model`` as :class:`Generator` does (same prompts, ends, greedy output), the ``heads``
    proposing ``tree`` (paths, see :mod:`lmhpc.medusa.tree`) each round. ``last_stats``: the last call's
    counts (``proposed``: the tree's depth each round, ``accepted``: head tokens kept)."""

    def __init__(self, model: Transformer, heads: MedusaHeads, tokenizer: TextTokenizer,
                 tree: Sequence[Sequence[int]] = DEFAULT_TREE, posterior_threshold: float = 0.09,
                 posterior_alpha: float = 0.3, transpose_weights: bool = True) -> None:
        if any(model.args.layer_kind(i) != "attention" for i in range(model.args.n_layers)):
            raise ValueError("Medusa decoding needs an attention-only model (tree attention over its KV cache)")
        if heads.args.dim != model.args.dim or heads.args.vocab_size != model.args.vocab_size:
            raise ValueError(f"the heads (width {heads.args.dim}, vocabulary {heads.args.vocab_size}) do not fit "
                             f"the model (width {model.args.dim}, vocabulary {model.args.vocab_size})")
        self.tree = build_tree(tree, heads.args.num_heads)
        if max(self.tree.widths, default=0) > model.args.vocab_size:
            raise ValueError(f"the tree asks for {max(self.tree.widths)} candidates per head; the vocabulary has "
                             f"{model.args.vocab_size}")
        self.plain = Generator(model, tokenizer, transpose_weights=False)
        self.model, self.heads, self.tokenizer = model, heads, tokenizer
        self.threshold, self.alpha = posterior_threshold, posterior_alpha
        self.layout = TransposedWeights() if transpose_weights else None
        self.device = self.plain.device
        self.last_stats = SpeculativeStats()
        self._cuts: dict[int, Tree] = {self.tree.depth: self.tree}

    def generate(self, prompts: Sequence[Prompt], max_new_tokens: int = 128, temperature: float = 0.0,
                 top_k: int = 0, top_p: float = 1.0, stop: Sequence[str] = (), seed: int | None = None,
                 chat: bool = False, add_bos: bool = False, logprobs: bool = False,
                 ignore_eos: bool = False) -> list[Completion]:
        """One :class:`Completion` per prompt, as :meth:`Generator.generate` (no repetition penalty)."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        params = SamplingParams(temperature, top_k, top_p)
        encoded = [self.plain.encode(p, chat, add_bos) for p in prompts]
        if any(not ids for ids in encoded):
            raise ValueError("a prompt encodes to no tokens (add_bos=True gives it one)")
        generator = torch.Generator(device=self.device)
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
        end_ids = set() if ignore_eos else self.plain.end_ids(chat)
        self.last_stats = stats = SpeculativeStats()
        layout = self.layout.applied(self.model) if self.layout is not None else nullcontext()
        results = []
        with torch.inference_mode(), no_token_dropping(self.model), layout, captured_hidden(self.model) as seen:
            start = time.perf_counter()
            for ids in encoded:
                results.append(self._generate_one(ids, max_new_tokens, params, tuple(stop), end_ids, logprobs,
                                                  generator, stats, seen))
                seen.clear()
        stats.seconds = time.perf_counter() - start
        log.info("medusa decoding: %d tokens in %.2fs (%.1f tokens/s), %.2f tokens per forward", stats.tokens,
                 stats.seconds, stats.tokens_per_second, stats.tokens_per_round)
        return results

    def _choose(self, logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
        if params.temperature == 0.0:
            return int(logits.argmax())
        return int(torch.multinomial(probabilities(logits, params), 1, generator=generator))

    def _choosable(self, logits: torch.Tensor) -> torch.Tensor:
        if logits.shape[-1] > self.tokenizer.vocab_size:
            logits = logits.clone()
            logits[..., self.tokenizer.vocab_size:] = float("-inf")
        return logits

    def _tree_for(self, room: int) -> Tree:
        """The tree cut to ``room`` levels below the root (the model's positions or the cache run out)."""
        depth = max(0, min(room, self.tree.depth))
        if depth not in self._cuts:
            self._cuts[depth] = self.tree.cut(depth)
        return self._cuts[depth]

    def _generate_one(self, prompt: list[int], max_new_tokens: int, params: SamplingParams, stop: tuple[str, ...],
                      end_ids: set[int], want_logprobs: bool, generator: torch.Generator, stats: SpeculativeStats,
                      seen: list[torch.Tensor]) -> Completion:
        limit = self.model.args.max_seq_len
        if len(prompt) + max_new_tokens > limit:
            raise ValueError(f"a prompt of {len(prompt)} tokens + {max_new_tokens} new ones exceeds the model's "
                             f"max_seq_len {limit}")
        cache = InferenceCache(self.model.args, 1, len(prompt) + max_new_tokens + self.tree.size, self.device,
                               self.plain.dtype)
        logits = self._choosable(self.model(torch.tensor([prompt], device=self.device), cache=cache,
                                            last_only=True)[0, -1])
        hidden = seen[-1][0, -1]
        root = self._choose(logits, params, generator)
        root_logits = logits
        row = _Row(prompt)
        while True:
            # room: positions up to max_seq_len - 1, and tokens this row may still take
            room = min(limit - 1 - int(cache.next_position[0]), max_new_tokens - len(row.tokens) - 1)
            tree = self._tree_for(room)
            tokens = self._candidates(tree, root, hidden)
            start = cache.length
            cache.set_tree(tree.ancestors, tree.depths)
            tree_logits = self._choosable(self.model(tokens[None], cache=cache)[0])
            tree_hidden = seen[-1][0]
            seen.clear()
            path = self._accept(tree, tokens, tree_logits, params)
            cache.keep(start, path)
            stats.rounds += 1
            stats.proposed += tree.depth
            stats.accepted += len(path) - 1
            kept = tokens[path].tolist()
            parents = [root_logits, *[tree_logits[i] for i in path[:-1]]]
            for token, before in zip(kept, parents):
                row.tokens.append(token)
                if want_logprobs:
                    row.logprobs.append(float(torch.log_softmax(before.float(), dim=-1)[token]))
                stats.tokens += 1
                if token in end_ids:
                    row.finish = "eos"
                elif stop and row.hits_stop(self.tokenizer, stop):
                    row.finish = "stop"
                elif len(row.tokens) == max_new_tokens:
                    row.finish = "length"
                if row.finish is not None:
                    return row.completion(self.tokenizer, stop, want_logprobs)
            last = path[-1]
            root_logits, hidden = tree_logits[last], tree_hidden[last]
            root = self._choose(root_logits, params, generator)

    def _candidates(self, tree: Tree, root: int, hidden: torch.Tensor) -> torch.Tensor:
        """The tree's tokens (T,): the root, then each node's head candidate."""
        if tree.depth == 0:
            return torch.tensor([root], device=self.device)
        logits = self._choosable(head_logits(self.model, self.heads, hidden[None])[0, :tree.depth])  # (depth, V)
        top = logits.topk(max(tree.widths), dim=-1).indices.tolist()
        return torch.tensor([root, *[top[len(p) - 1][p[-1]] for p in tree.paths[1:]]], device=self.device)

    def _accept(self, tree: Tree, tokens: torch.Tensor, logits: torch.Tensor, params: SamplingParams) -> list[int]:
        """The longest accepted path from the root (node indices, the root first)."""
        if tree.size == 1:
            return [0]
        if params.temperature == 0.0:
            ok = (tokens[1:] == logits.argmax(dim=-1)[list(tree.parents[1:])]).tolist()
        else:
            probs = probabilities(logits, params)  # (T, V): the model's distribution after each node
            entropy = -(probs * probs.clamp(min=1e-30).log()).sum(-1)
            floor = torch.minimum(torch.full_like(entropy, self.threshold), self.alpha * torch.exp(-entropy))
            parents = list(tree.parents[1:])
            ok = (probs[parents].gather(1, tokens[1:, None])[:, 0] > floor[parents]).tolist()
        accepted = [True] + ok
        best = [0]
        paths: dict[int, list[int]] = {0: [0]}
        for i in range(1, tree.size):  # nodes come by depth: a parent is settled before its children
            parent = tree.parents[i]
            if accepted[i] and parent in paths:
                paths[i] = [*paths[parent], i]
                if len(paths[i]) > len(best):
                    best = paths[i]
        return best
