"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023): a draft model proposes, the target verifies.

    spec = SpeculativeGenerator(target, draft, tokenizer, num_draft=4)
    [c] = spec.generate(["Once upon a time"], max_new_tokens=64)
    spec.last_stats.acceptance_rate, spec.last_stats.tokens_per_second

Each round the draft proposes ``k`` tokens one at a time (q_i), the target scores all of them in one
forward (p_i), and the proposals are kept from the left while a uniform draw stays below p_i(d)/q_i(d).
At the first rejection one token is drawn from norm(max(0, p_i - q_i)); when all ``k`` are kept, one more is
drawn from the target's next distribution. Each kept token is then distributed exactly as the target's
own sampling would draw it. p and q are the distributions :func:`lmhpc.infer.sampling.next_tokens` draws
from (temperature, then top-k, then top-p); greedy (temperature 0) keeps a proposal iff it is the target's
argmax, so the output is plain greedy's. Batch 1: prompts are decoded one after another. The caches of
both models are cut back to the kept tokens after each round (attention-only models:
:meth:`InferenceCache.truncate`).

A draft is any model with the target's vocabulary: a smaller model, or :func:`truncated_draft` (the
target's first layers, then its norm and output layer, sharing their weights).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace

import torch
from torch import nn

from lmhpc.exchange.tokenizer import TextTokenizer
from lmhpc.infer.generate import Completion, Generator, Prompt, _Row
from lmhpc.infer.layout import TransposedWeights
from lmhpc.infer.routing import no_token_dropping
from lmhpc.infer.sampling import SamplingParams, filter_top_k, filter_top_p
from lmhpc.model.cache import InferenceCache
from lmhpc.model.transformer import Transformer

log = logging.getLogger(__name__)


def truncated_draft(model: Transformer, n_layers: int) -> Transformer:
    """A draft made of ``model``'s first ``n_layers`` blocks, then its final norm and output layer. The
    weights are shared with ``model`` (no copy)."""
    if not 1 <= n_layers < model.args.n_layers:
        raise ValueError(f"draft layers must be in [1, {model.args.n_layers - 1}], got {n_layers}")
    with torch.device("meta"):
        draft = Transformer(replace(model.args, n_layers=n_layers))
    draft.tok_embeddings = model.tok_embeddings
    draft.layers = nn.ModuleDict({str(i): model.layers[str(i)] for i in range(n_layers)})
    draft.norm, draft.output = model.norm, model.output
    draft.rope_cos, draft.rope_sin = model.rope_cos, model.rope_sin
    return draft.eval()


def probabilities(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The distributions (..., vocab) that :func:`~lmhpc.infer.sampling.next_tokens` samples from, float32."""
    logits = logits.float() / params.temperature
    return filter_top_p(filter_top_k(logits, params.top_k), params.top_p).softmax(dim=-1)


def accept_drafts(drafts: list[int], p: torch.Tensor, q: torch.Tensor,
                  generator: torch.Generator | None = None) -> tuple[list[int], bool]:
    """The exact acceptance rule on one round: ``drafts`` (k tokens) drawn from ``q`` (k, vocab), the target's
    distributions ``p`` (k + 1, vocab) at the same positions and one beyond. Returns the tokens kept (the
    accepted prefix of ``drafts``, then one token from the residual or, all accepted, from ``p[k]``) and
    whether every draft was accepted."""
    k = len(drafts)
    if k:
        index = torch.tensor(drafts, device=p.device)
        ratio = p[:k].gather(1, index[:, None])[:, 0] / q.gather(1, index[:, None])[:, 0]
        draws = torch.rand(k, generator=generator, device=p.device)
        rejected = (draws >= ratio).tolist()
    else:
        rejected = []
    for i, is_rejected in enumerate(rejected):
        if is_rejected:
            residual = (p[i] - q[i]).clamp(min=0)
            if float(residual.sum()) <= 0:  # p == q up to rounding: the draw from p is the draw from the residual
                residual = p[i]
            fix = int(torch.multinomial(residual, 1, generator=generator))
            return [*drafts[:i], fix], False
    bonus = int(torch.multinomial(p[k], 1, generator=generator))
    return [*drafts, bonus], True


@dataclass
class SpeculativeStats:
    """Counts of one :meth:`SpeculativeGenerator.generate` call (all its prompts)."""

    tokens: int = 0  # generated tokens kept
    proposed: int = 0  # draft tokens proposed
    accepted: int = 0  # of which the target accepted
    rounds: int = 0  # target forwards while decoding (one per round)
    seconds: float = 0.0

    @property
    def acceptance_rate(self) -> float:
        """Accepted ÷ proposed draft tokens."""
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def tokens_per_round(self) -> float:
        """Tokens kept per target forward (plain decoding: 1)."""
        return self.tokens / self.rounds if self.rounds else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


class SpeculativeGenerator:
    """Generates with ``target`` as :class:`Generator` does (same prompts, ends, greedy output), with
    ``draft`` proposing ``num_draft`` tokens per target forward. ``last_stats``: the last call's counts."""

    def __init__(self, target: Transformer, draft: Transformer, tokenizer: TextTokenizer, num_draft: int = 4,
                 transpose_weights: bool = True) -> None:
        if num_draft < 1:
            raise ValueError(f"num_draft must be >= 1, got {num_draft}")
        if draft.args.vocab_size != target.args.vocab_size:
            raise ValueError(f"the draft's vocabulary ({draft.args.vocab_size}) is not the target's "
                             f"({target.args.vocab_size})")
        for name, model in (("target", target), ("draft", draft)):
            if any(model.args.layer_kind(i) != "attention" for i in range(model.args.n_layers)):
                raise ValueError(f"speculative decoding needs attention-only models; the {name} has Mamba layers")
        self.plain = Generator(target, tokenizer, transpose_weights=False)
        self.target, self.draft, self.tokenizer, self.num_draft = target, draft, tokenizer, num_draft
        self.layout = TransposedWeights() if transpose_weights else None
        self.device = self.plain.device
        self.last_stats = SpeculativeStats()

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
        results = []
        with torch.inference_mode(), no_token_dropping(self.target), no_token_dropping(self.draft), \
                self._layout(self.target), self._layout(self.draft):
            start = time.perf_counter()  # after the layout's weight copies, made once per model
            for ids in encoded:
                results.append(self._generate_one(ids, max_new_tokens, params, tuple(stop), end_ids, logprobs,
                                                  generator, stats))
        stats.seconds = time.perf_counter() - start
        log.info("speculative decoding: %d tokens in %.2fs (%.1f tokens/s), %d of %d drafts accepted (%.0f%%), "
                 "%.2f tokens per target forward", stats.tokens, stats.seconds, stats.tokens_per_second,
                 stats.accepted, stats.proposed, 100 * stats.acceptance_rate, stats.tokens_per_round)
        return results

    def _layout(self, model: Transformer):
        return self.layout.applied(model) if self.layout is not None else nullcontext()

    def _generate_one(self, prompt: list[int], max_new_tokens: int, params: SamplingParams, stop: tuple[str, ...],
                      end_ids: set[int], want_logprobs: bool, generator: torch.Generator,
                      stats: SpeculativeStats) -> Completion:
        limit = self.target.args.max_seq_len
        if len(prompt) + max_new_tokens > min(limit, self.draft.args.max_seq_len):
            raise ValueError(f"a prompt of {len(prompt)} tokens + {max_new_tokens} new ones exceeds the model's "
                             f"max_seq_len {min(limit, self.draft.args.max_seq_len)}")
        size = len(prompt) + max_new_tokens
        target_cache = InferenceCache(self.target.args, 1, size, self.device, self.plain.dtype)
        draft_cache = InferenceCache(self.draft.args, 1, size, self.device, self.plain.dtype)
        row = _Row(prompt)
        seq = list(prompt)
        while row.finish is None:
            remaining = max_new_tokens - len(row.tokens)
            k = min(self.num_draft, remaining - 1)  # a round keeps at most k + 1 tokens
            drafts, q = self._propose(seq, k, draft_cache, params, generator)
            target_logits = self._score(seq, drafts, target_cache)
            kept = self._verify(drafts, q, target_logits, params, generator)
            stats.rounds += 1
            stats.proposed += k
            stats.accepted += len(kept) - 1
            for i, token in enumerate(kept):
                row.tokens.append(token)
                if want_logprobs:
                    row.logprobs.append(float(torch.log_softmax(target_logits[i].float(), dim=-1)[token]))
                stats.tokens += 1
                if token in end_ids:
                    row.finish = "eos"
                elif stop and row.hits_stop(self.tokenizer, stop):
                    row.finish = "stop"
                elif len(row.tokens) == max_new_tokens:
                    row.finish = "length"
                if row.finish is not None:
                    break
            seq.extend(kept)
            # the caches keep the tokens of seq but its last one, which the next round feeds
            target_cache.truncate(len(seq) - 1)
            draft_cache.truncate(min(draft_cache.length, len(seq) - 1))
        return row.completion(self.tokenizer, stop, want_logprobs)

    def _choosable(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits with the ids past the tokenizer's vocabulary (hardware padding) made impossible."""
        if logits.shape[-1] > self.tokenizer.vocab_size:
            logits = logits.clone()
            logits[..., self.tokenizer.vocab_size:] = float("-inf")
        return logits

    def _propose(self, seq: list[int], k: int, cache: InferenceCache, params: SamplingParams,
                 generator: torch.Generator) -> tuple[list[int], torch.Tensor | None]:
        """``k`` draft tokens after ``seq`` and, when sampling, the distributions they were drawn from (k, vocab).
        The draft's cache catches up on the tokens of ``seq`` it has not seen."""
        drafts: list[int] = []
        dists = []
        pending = seq[cache.length:]
        for _ in range(k):
            tokens = torch.tensor([pending], device=self.device)
            logits = self._choosable(self.draft(tokens, cache=cache, last_only=True)[0, -1])
            if params.temperature == 0.0:
                token = int(logits.argmax())
            else:
                q = probabilities(logits, params)
                token = int(torch.multinomial(q, 1, generator=generator))
                dists.append(q)
            drafts.append(token)
            pending = [token]
        return drafts, torch.stack(dists) if dists else None

    def _score(self, seq: list[int], drafts: list[int], cache: InferenceCache) -> torch.Tensor:
        """The target's logits (len(drafts) + 1, vocab) after ``seq``'s last token and after each draft. A
        prompt's tokens before its last are first fed alone (their logits are not needed)."""
        if cache.length < len(seq) - 1:
            self.target(torch.tensor([seq[cache.length:-1]], device=self.device), cache=cache, last_only=True)
        tokens = torch.tensor([seq[-1:] + drafts], device=self.device)
        return self._choosable(self.target(tokens, cache=cache)[0])

    def _verify(self, drafts: list[int], q: torch.Tensor | None, target_logits: torch.Tensor,
                params: SamplingParams, generator: torch.Generator) -> list[int]:
        """The tokens a round keeps (see the module docstring)."""
        if params.temperature == 0.0:
            best = target_logits.argmax(dim=-1).tolist()
            kept = 0
            while kept < len(drafts) and drafts[kept] == best[kept]:
                kept += 1
            return [*drafts[:kept], best[kept]]
        p = probabilities(target_logits, params)
        assert q is not None or not drafts
        return accept_drafts(drafts, p, q if q is not None else p[:0], generator)[0]
