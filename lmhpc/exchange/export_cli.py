"""``lmhpc export CHECKPOINT --format consolidated|hf|gguf --out PATH``: write a model in another format.

CHECKPOINT is anything :func:`lmhpc.exchange.load_model` reads: a pretrain stage folder (its newest complete
checkpoint), a checkpoint step folder, a consolidated or Hugging Face folder, a .gguf file.

- ``consolidated``: ``model.safetensors`` + ``model_args.json`` + tokenizer files (loads in one process,
  and starts a new run with ``pretrain.init_from``);
- ``hf``: a ``LlamaForCausalLM`` (or ``MixtralForCausalLM``) folder for transformers;
- ``gguf``: one llama.cpp file, matrices in ``--gguf-type`` (norm gains stay F32). ``--out`` is the file, or
  a folder that receives ``model-<type>.gguf``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

FORMATS = ("consolidated", "hf", "gguf")
DTYPES = ("float32", "bfloat16", "float16")


def build_parser() -> argparse.ArgumentParser:
    from lmhpc.exchange.gguf_export import GGUF_TYPES

    p = argparse.ArgumentParser(prog="lmhpc export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="model folder or .gguf file")
    p.add_argument("--format", choices=FORMATS, required=True)
    p.add_argument("--out", required=True, help="output folder (gguf: a .gguf file or a folder)")
    p.add_argument("--gguf-type", choices=GGUF_TYPES, default="f16", help="gguf: type of the matrices (default f16)")
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="consolidated and hf: type of the stored tensors (default float32)")
    p.add_argument("--tokenizer", default=None,
                   help="take the tokenizer files from this folder (default: the ones that come with the model)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    return p


def gguf_path(out: Path, qtype: str) -> Path:
    return out if out.suffix == ".gguf" else out / f"model-{qtype}.gguf"


def main(argv: list[str] | None = None) -> int:
    """Export; 0 on success, 2 on a model or argument the format cannot take (with the reason)."""
    args = build_parser().parse_args(argv)
    import torch

    from lmhpc.exchange.consolidated import write_consolidated
    from lmhpc.exchange.gguf_export import write_gguf
    from lmhpc.exchange.hf import write_hf
    from lmhpc.exchange.load import read_weights
    from lmhpc.exchange.weights import read_tokenizer_files

    out = Path(args.out)
    dtype = getattr(torch, args.dtype)
    try:
        weights = read_weights(args.checkpoint)
        if args.tokenizer:
            weights.tokenizer_files = read_tokenizer_files(Path(args.tokenizer))
            if not weights.tokenizer_files:
                raise FileNotFoundError(f"no tokenizer files in {args.tokenizer}")
        if args.format == "consolidated":
            written = write_consolidated(weights, out, dtype=dtype, overwrite=args.overwrite)
        elif args.format == "hf":
            written = write_hf(weights, out, dtype=dtype, overwrite=args.overwrite)
        else:
            written = gguf_path(out, args.gguf_type)
            if written.exists() and not args.overwrite:
                raise FileExistsError(f"{written} exists (pass --overwrite to replace it)")
            write_gguf(weights, written, args.gguf_type)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"lmhpc export: {e}", file=sys.stderr)
        return 2
    params = sum(t.numel() for t in weights.state.values())
    print(f"wrote {written} ({args.format}{' ' + args.gguf_type if args.format == 'gguf' else ''}, "
          f"{params:,} parameters, from {weights.source})")
    return 0
