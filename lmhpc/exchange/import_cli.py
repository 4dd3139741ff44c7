"""``lmhpc import FILE_OR_DIR --out DIR``: an existing model as a consolidated folder of ours.

Reads a .gguf file (llama architecture; any quantisation ``gguf`` dequantises; its sentencepiece or
byte-level BPE tokenizer and chat template), a Hugging Face Llama / Mixtral folder, or anything else
:func:`lmhpc.exchange.load_model` reads, and writes ``model.safetensors`` + ``model_args.json`` + tokenizer
files: ready for ``lmhpc generate``, ``lmhpc evaluate``, the later stages, or ``pretrain.init_from``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DTYPES = ("float32", "bfloat16", "float16")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lmhpc import", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help=".gguf file or model folder")
    p.add_argument("--out", required=True, help="consolidated folder to write")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="type of the stored tensors (default float32)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    return p


def main(argv: list[str] | None = None) -> int:
    """Import; 0 on success, 2 on a model our architecture cannot hold (with the reason)."""
    args = build_parser().parse_args(argv)
    import torch

    from lmhpc.exchange.consolidated import write_consolidated
    from lmhpc.exchange.load import build_model, read_weights

    try:
        weights = read_weights(args.source)
        build_model(weights)  # every tensor has its place: refuse before writing anything
        if not weights.tokenizer_files:
            raise FileNotFoundError(f"no tokenizer comes with {args.source}")
        out = write_consolidated(weights, Path(args.out), dtype=getattr(torch, args.dtype), overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"lmhpc import: {e}", file=sys.stderr)
        return 2
    a = weights.args
    print(f"wrote {out}: {a.n_layers} layers, dim {a.dim}, {a.n_heads}/{a.kv_heads} heads, vocabulary {a.vocab_size}"
          f"{', tied embeddings' if a.tie_embeddings else ''} (from {weights.metadata.get('format')} {args.source})")
    return 0
