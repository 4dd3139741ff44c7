"""Training batches from the tokenize stage's Megatron ``.bin/.idx`` files, through megatron-core.

megatron-core's ``BlendedMegatronDatasetBuilder`` + ``GPTDataset`` build the blended, shuffled
sample order (seeded; cached under the stage folder). Step ``s`` of a run draws the global batch
of samples ``[s·G, (s+1)·G)`` (``G`` = sequences per optimizer step), so the order depends on the
config and seed only, never on the number of ranks; each rank reads its own slice of it. The data
position saved in checkpoints is that step index (it runs ahead of the optimizer step after a
spike rollback skips data).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


@contextlib.contextmanager
def quiet_megatron() -> Iterator[None]:
    """Import megatron-core inside this block. Its import-time warnings (no Transformer Engine or apex,
    as expected on CPU; deprecations of modules we do not use) are ignored within the block only; its
    loggers (Megatron-FSDP's info lines, the dataset builder's progress) are set to WARNING for good."""
    logging.getLogger("megatron").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@dataclass
class TokenIds:
    """What megatron-core's GPT dataset needs to know of the tokenizer."""

    vocab_size: int
    eod: int
    pad: int = -1  # megatron's "no pad token": padding only where a sample runs past the data

    @property
    def unique_identifiers(self) -> dict[str, int | str]:
        """Part of megatron's cache key for the sample order."""
        return {"class": "TokenIds", "vocab_size": self.vocab_size, "eod": self.eod, "pad": self.pad}


def tokenizer_vocab(model_path: Path) -> tuple[int, int]:
    """(vocabulary size, end-of-document id) of a sentencepiece model."""
    import sentencepiece as spm

    if not model_path.is_file():
        raise FileNotFoundError(f"tokenizer model {model_path} does not exist")
    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    return sp.vocab_size(), sp.eos_id()


def check_prefixes(prefixes: list[str]) -> None:
    for p in prefixes:
        for suffix in (".bin", ".idx"):
            if not Path(p + suffix).is_file():
                raise FileNotFoundError(f"tokenized data file {p + suffix} does not exist")


class GlobalBatches:
    """Sample ``i`` of the run is ``dataset[i mod len]``; one step's global batch is ``G`` samples."""

    def __init__(self, prefixes: list[str], weights: list[float] | None, seq_len: int, global_batch: int,
                 num_samples: int, seed: int, cache_dir: Path, token_ids: TokenIds) -> None:
        check_prefixes(prefixes)
        with quiet_megatron():
            from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
            from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

        cache_dir.mkdir(parents=True, exist_ok=True)
        config = GPTDatasetConfig(
            random_seed=seed,
            sequence_length=seq_len,
            blend=(prefixes, weights),
            split="100,0,0",
            path_to_cache=str(cache_dir),
            tokenizer=token_ids,
            reset_position_ids=False,
            reset_attention_mask=False,
            eod_mask_loss=False,
            create_attention_mask=False,
        )
        train, _, _ = BlendedMegatronDatasetBuilder(GPTDataset, [num_samples, 0, 0], lambda: True, config).build()
        self.dataset = train
        self.token_ids = token_ids
        self.seq_len = seq_len
        self.global_batch = global_batch
        if len(self.dataset) == 0:
            raise ValueError(f"the tokenized data {prefixes} holds no sample of {seq_len + 1} tokens")
        if not dist.is_initialized() or dist.get_rank() == 0:
            log.info("training data: %d samples of %d tokens from %d prefix(es)", len(self.dataset), seq_len,
                     len(prefixes))

    def samples(self, indices: range) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens (n, T) and labels (n, T), masked labels set to :data:`IGNORE_INDEX`."""
        tokens, labels = [], []
        n = len(self.dataset)
        for i in indices:
            item = self.dataset[i % n]
            lab = item["labels"].clone()
            lab[item["loss_mask"] == 0] = IGNORE_INDEX
            tokens.append(item["tokens"])
            labels.append(lab)
        return torch.stack(tokens), torch.stack(labels)

    def micro_batch(self, data_step: int, micro: int, micro_batch_size: int, dp: int, dp_rank: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """This data-parallel rank's part of micro-batch ``micro`` of global batch ``data_step``."""
        start = data_step * self.global_batch + (micro * dp + dp_rank) * micro_batch_size
        return self.samples(range(start, start + micro_batch_size))


def synthetic_tokens(vocab_size: int, num_docs: int, doc_len: int, seed: int, eod: int) -> list[np.ndarray]:
    """Documents from a random first-order Markov chain (learnable, deterministic); for benchmarks."""
    rng = np.random.default_rng(seed)
    nxt = rng.integers(0, vocab_size, size=(vocab_size, 4))
    docs = []
    for _ in range(num_docs):
        tok = int(rng.integers(0, vocab_size))
        seq = np.empty(doc_len, dtype=np.int64)
        choices = rng.integers(0, 4, size=doc_len)
        for j in range(doc_len):
            seq[j] = tok
            tok = int(nxt[tok, choices[j]])
        seq[-1] = eod
        docs.append(seq)
    return docs


def write_indexed_dataset(prefix: Path, docs: list[np.ndarray], vocab_size: int) -> Path:
    """Write documents as a Megatron ``prefix.bin/.idx`` pair (megatron-core's builder)."""
    with quiet_megatron():
        from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    prefix.parent.mkdir(parents=True, exist_ok=True)
    builder = IndexedDatasetBuilder(str(prefix) + ".bin", dtype=DType.optimal_dtype(vocab_size))
    for doc in docs:
        builder.add_document(doc, [len(doc)])  # megatron calls numpy.array on it: a tensor warns, an array not
    builder.finalize(str(prefix) + ".idx")
    return prefix
