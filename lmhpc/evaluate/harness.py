"""lm-evaluation-harness on our models: an ``LM`` adapter and an offline ``simple_evaluate`` call.

:class:`LMHarnessModel` is a ``lm_eval.api.model.TemplateLM``: the harness tokenizes requests with our
tokenizer (``tok_encode``) and hands us token ids, which :class:`~lmhpc.evaluate.scoring.Scorer` scores with
each distinct context computed once. ``lm_eval.simple_evaluate(model=LMHarnessModel(...), tasks=[...])`` then
runs any harness task on our checkpoints. ``lm_eval`` is imported only when this module is: the rest of the
stage does not need it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmhpc.evaluate.config import HarnessConfig
from lmhpc.evaluate.perplexity import rolling_windows
from lmhpc.evaluate.scoring import Scorer
from lmhpc.exchange.tokenizer import TextTokenizer

try:
    from lm_eval.api.model import TemplateLM
except ImportError as e:  # pragma: no cover - lm-eval is in requirements.txt
    raise ImportError("the lm-evaluation-harness adapter needs lm-eval: pip install lm-eval==0.4.13") from e

log = logging.getLogger("lmhpc.evaluate")


class LMHarnessModel(TemplateLM):
    """Our model and tokenizer as an lm-evaluation-harness model (one process)."""

    def __init__(self, model: nn.Module, tokenizer: TextTokenizer, device: torch.device, max_length: int,
                 batch_tokens: int = 2048) -> None:
        super().__init__()
        self.model = model
        self.text_tokenizer = tokenizer
        self._device = device
        self.max_length = max_length
        self.scorer = Scorer(model, device, max_length, batch_tokens)
        self.truncated = 0  # requests cut from the left to fit, as the harness's own models do

    @property
    def eot_token_id(self) -> int:
        if self.text_tokenizer.eos_id is None:
            raise ValueError("the tokenizer has no end-of-sequence token")
        return self.text_tokenizer.eos_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.text_tokenizer.bos_id
        return bos if bos is not None else self.eot_token_id

    @property
    def device(self) -> torch.device:
        return self._device

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        """Token ids of ``string`` (no BOS: the harness adds the prefix token where it needs one)."""
        return self.text_tokenizer.encode(string)

    def tok_decode(self, tokens: list[int], **kwargs: Any) -> str:
        return self.text_tokenizer.decode(tokens)

    def _loglikelihood_tokens(self, requests: list[tuple[tuple[str, str], list[int], list[int]]],
                              disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        pairs = []
        for _, context, continuation in requests:
            if len(continuation) > self.max_length:
                raise ValueError(f"a continuation of {len(continuation)} tokens exceeds the model's "
                                 f"{self.max_length} positions")
            if not self.scorer.fits(context, continuation):
                # the harness's own rule: keep the last max_length + 1 tokens
                whole = (context + continuation)[-(self.max_length + 1):]
                context = whole[:len(whole) - len(continuation)]
                self.truncated += 1
                log.warning("a request of %d tokens is cut from the left to the model's %d positions",
                            len(context) + len(continuation), self.max_length)
            pairs.append((context, continuation))
        results = self.scorer.loglikelihood(pairs)
        for (strings, _, _), result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", strings, result)
        return results

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole texts over rolling windows of the model's context."""
        pairs, owner = [], []
        for r, request in enumerate(requests):
            (text,) = request.args
            for pair in rolling_windows(self.tok_encode(text), self.prefix_token_id, self.max_length):
                pairs.append(pair)
                owner.append(r)
        totals = [0.0] * len(requests)
        for r, (logprob, _) in zip(owner, self.scorer.loglikelihood(pairs) if pairs else []):
            totals[r] += logprob
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Continuations of each context (greedy unless ``gen_kwargs`` ask for sampling), cut before the first
        stop string (``until``) and at the end-of-sequence token; requests with the same settings run batched."""
        from lmhpc.infer.generate import Generator

        generator = Generator(self.model, self.text_tokenizer)
        groups: dict[tuple, list[int]] = {}
        for i, request in enumerate(requests):
            kwargs = dict(request.args[1] or {})
            until = kwargs.pop("until", None) or []
            until = (until,) if isinstance(until, str) else tuple(until)
            sample = bool(kwargs.pop("do_sample", False))
            temperature = float(kwargs.pop("temperature", 0.0)) if sample else 0.0
            groups.setdefault((until, int(kwargs.pop("max_gen_toks", 256)), temperature), []).append(i)
        out = [""] * len(requests)
        for (until, max_new, temperature), members in groups.items():
            contexts = [requests[i].args[0] for i in members]
            completions = generator.generate(contexts, max_new_tokens=max_new, temperature=temperature, stop=until,
                                             seed=0 if temperature else None)
            for i, completion in zip(members, completions):
                out[i] = completion.text
                self.cache_hook.add_partial("generate_until", requests[i].args, completion.text)
        return out


def run_harness(model: LMHarnessModel, cfg: HarnessConfig, resolve: Callable[[str], Path], cache_dir: Path
                ) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` on ``cfg.tasks`` with this model, offline; the harness's results per task."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_CACHE", str(cache_dir))
    import lm_eval
    from lm_eval.tasks import TaskManager

    include = str(resolve(cfg.include_path)) if cfg.include_path else None
    manager = TaskManager(include_path=include, include_defaults=include is None)
    results = lm_eval.simple_evaluate(model=model, tasks=list(cfg.tasks), task_manager=manager,
                                      limit=cfg.limit or None, num_fewshot=cfg.num_fewshot or None,
                                      bootstrap_iters=0, log_samples=False)
    out = {name: {k.replace(",none", ""): v for k, v in scores.items() if k != "alias"}
           for name, scores in results["results"].items()}
    if model.truncated:
        out["_truncated_requests"] = model.truncated
    return out
