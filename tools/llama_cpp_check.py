"""Check a GGUF export with llama.cpp itself (through llama-cpp-python): does llama.cpp tokenize a mixed text as
our tokenizer does, and does its next-token choice agree with our model's at every position?

    .venv/bin/python tools/llama_cpp_check.py MODEL [--gguf-type f32|f16|q8_0] [--text FILE] [--json OUT]

MODEL is anything ``lmhpc.exchange.load_model`` reads. A .gguf file is checked as it is; anything else is first
exported with ``lmhpc.exchange.gguf_export`` (``--gguf-type``, default f32). Our logits come from our model on
the weights the GGUF file holds (dequantised), so only llama.cpp's arithmetic differs.

llama-cpp-python has no prebuilt wheel for this platform: it builds from its sdist, 15–25 minutes on 2 cores.
``--install`` runs ``pip install --no-deps llama-cpp-python==0.3.36 diskcache`` into ``--install-target`` (default
``.venv/llama-cpp``, outside the venv's own packages, so ``pip check`` stays clean) and uses it from there;
without it the tool uses an installed llama_cpp, or that folder if it exists. Exit code 0 when the tokens are
identical and the top-1 agreement is at least ``--min-agreement`` (default 0.99), else 1.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"
# its dependencies but the ones the venv already has (numpy, jinja2, typing-extensions): a second numpy in the
# target folder would shadow the venv's
EXTRA = ("diskcache==5.6.3",)
DEFAULT_TARGET = REPO / ".venv" / "llama-cpp"
# English, German, French, code, numbers, symbols, emoji, runs of spaces and newlines
MIXED_TEXT = (
    "The river rose for 3 days; in 1987 the ferry cost $12.50 and ran every 15 minutes.\n"
    "Der Zug nach München hatte wieder Verspätung. L'été dernier, nous étions à Besançon.\n"
    "def add(a, b):\n    return a + b  # 42 → ok ✓ 😀\n\n"
    "Prices: 4,520 books; 118,000 visitors;   three spaces and a tab\tthen more text."
)


def import_llama_cpp(install: bool, target: Path):
    """The ``llama_cpp`` module: installed, or in ``target``, or built into ``target`` when ``install``."""
    if target.is_dir():
        sys.path.insert(0, str(target))
    try:
        import llama_cpp

        return llama_cpp
    except ImportError:
        if not install:
            raise SystemExit(f"llama_cpp is not installed: rerun with --install (builds {LLAMA_CPP_PYTHON} from its "
                             f"sdist into {target}, 15–25 minutes on 2 cores)") from None
    print(f"building {LLAMA_CPP_PYTHON} into {target} (15–25 minutes on 2 cores) ...", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-deps", "--target",
                    str(target), LLAMA_CPP_PYTHON, *EXTRA], check=True)
    sys.path.insert(0, str(target))
    import llama_cpp

    return llama_cpp


def first_difference(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def check(gguf_file: Path, text: str, llama_cpp, threads: int) -> dict:
    """Tokenize ``text`` and score it with llama.cpp and with our model read from the same file."""
    import numpy as np
    import torch

    from lmhpc.exchange.load import build_model, read_weights, weights_tokenizer

    weights = read_weights(gguf_file)
    model = build_model(weights).eval()
    tokenizer = weights_tokenizer(weights)
    ours = tokenizer.encode(text)

    llm = llama_cpp.Llama(model_path=str(gguf_file), n_ctx=max(64, 2 * len(ours)), logits_all=True,
                          n_threads=threads, verbose=False)
    theirs = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
    mismatch = first_difference(ours, theirs)
    theirs = theirs[:weights.args.max_seq_len]  # scored up to the model's context
    t0 = time.perf_counter()
    llm.reset()
    llm.eval(theirs)
    llama_logits = np.array(llm.scores[:len(theirs)], dtype=np.float32)
    llama_seconds = time.perf_counter() - t0
    with torch.no_grad():
        t0 = time.perf_counter()
        our_logits = model(torch.tensor([theirs]))[0].numpy()
        our_seconds = time.perf_counter() - t0
    agree = float((llama_logits.argmax(-1) == our_logits.argmax(-1)).mean())
    diff = np.abs(llama_logits - our_logits)
    return {
        "gguf": str(gguf_file),
        "file_type": weights.metadata.get("file_type"),
        "tokens_ours": len(ours),
        "tokens_llama_cpp": len(llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)),
        "tokens_scored": len(theirs),
        "tokens_identical": mismatch is None,
        "first_token_difference": None if mismatch is None else {
            "position": mismatch, "ours": [tokenizer.decode([i]) for i in ours[mismatch:mismatch + 5]],
            "llama_cpp": [tokenizer.decode([i]) for i in theirs[mismatch:mismatch + 5]]},
        "top1_agreement": agree,
        "max_abs_logit_diff": float(diff.max()),
        "mean_abs_logit_diff": float(diff.mean()),
        "llama_cpp_seconds": round(llama_seconds, 3),
        "ours_seconds": round(our_seconds, 3),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model folder or .gguf file")
    p.add_argument("--gguf-type", choices=("f32", "f16", "q8_0"), default="f32")
    p.add_argument("--text", default=None, help="a UTF-8 text file to check on (default: a built-in mixed text)")
    p.add_argument("--install", action="store_true", help=f"build {LLAMA_CPP_PYTHON} if it is missing")
    p.add_argument("--install-target", default=str(DEFAULT_TARGET))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--min-agreement", type=float, default=0.99)
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)

    llama_cpp = import_llama_cpp(args.install, Path(args.install_target))
    text = Path(args.text).read_text(encoding="utf-8") if args.text else MIXED_TEXT
    with tempfile.TemporaryDirectory(prefix="lmhpc-llama-cpp-") as tmp:
        model = Path(args.model)
        if model.suffix == ".gguf":
            gguf_file = model
        else:
            from lmhpc.exchange.gguf_export import write_gguf
            from lmhpc.exchange.load import read_weights

            gguf_file = write_gguf(read_weights(model), Path(tmp) / f"model-{args.gguf_type}.gguf", args.gguf_type)
        result = check(gguf_file, text, llama_cpp, args.threads)
    result.update({"model": str(args.model), "llama_cpp_python": getattr(llama_cpp, "__version__", "?"),
                   "machine": platform.machine(), "python": platform.python_version(),
                   "date": time.strftime("%Y-%m-%d")})
    for key in ("tokens_identical", "tokens_ours", "tokens_llama_cpp", "tokens_scored", "top1_agreement",
                "max_abs_logit_diff", "mean_abs_logit_diff", "llama_cpp_seconds", "ours_seconds"):
        print(f"{key:<22} {result[key]}")
    if result["first_token_difference"]:
        print(f"first difference       {result['first_token_difference']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return 0 if result["tokens_identical"] and result["top1_agreement"] >= args.min_agreement else 1


if __name__ == "__main__":
    sys.exit(main())
