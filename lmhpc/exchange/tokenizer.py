"""One text tokenizer interface over the tokenizers a model may come with.

- our tokenizer stage's sentencepiece model (``tokenizer.model``), the reference for models we train;
- a Hugging Face ``tokenizer.json`` (an imported HF model, or a GGUF's GPT-2-style byte-level BPE rebuilt
  with the ``tokenizers`` package).

Generation, evaluation and the alignment stages see only :class:`TextTokenizer`. A chat template comes from
``tokenizer_config.json`` (``chat_template``, Jinja, as transformers renders it); without one, ChatML is used
when the vocabulary has ``<|im_start|>``/``<|im_end|>``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

SP_MODEL = "tokenizer.model"
HF_TOKENIZER = "tokenizer.json"
HF_CONFIG = "tokenizer_config.json"

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class TextTokenizer(Protocol):
    """What the model's users need of its tokenizer."""

    vocab_size: int
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None

    def encode(self, text: str, add_bos: bool = False) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def token_id(self, piece: str) -> int | None: ...

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str: ...


@dataclass
class _Template:
    source: str | None
    bos: str
    eos: str

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        if self.source is None:
            raise ValueError("this tokenizer has no chat template (tokenizer_config.json has no 'chat_template' "
                             "and the vocabulary has no <|im_start|>/<|im_end|> tokens)")
        import jinja2

        env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)

        def raise_exception(message: str) -> None:
            raise ValueError(f"chat template: {message}")

        env.globals["raise_exception"] = raise_exception
        return env.from_string(self.source).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                                   bos_token=self.bos, eos_token=self.eos)


def _template(folder: Path, has_chatml: bool, bos: str, eos: str) -> _Template:
    config_path = folder / HF_CONFIG
    source = None
    if config_path.is_file():
        source = json.loads(config_path.read_text()).get("chat_template")
        if isinstance(source, list):  # several named templates: the default one
            source = next((t["template"] for t in source if t.get("name") == "default"), None)
    if source is None and has_chatml:
        source = CHATML_TEMPLATE
    return _Template(source, bos, eos)


class SentencePieceTokenizer:
    """A sentencepiece model (our tokenizer stage's ``tokenizer.model``)."""

    def __init__(self, model_path: Path) -> None:
        import sentencepiece as spm

        self.path = Path(model_path)
        self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
        self.vocab_size = self.sp.vocab_size()
        self.bos_id = _id_or_none(self.sp.bos_id())
        self.eos_id = _id_or_none(self.sp.eos_id())
        self.pad_id = _id_or_none(self.sp.pad_id())
        has_chatml = all(self.token_id(t) is not None for t in ("<|im_start|>", "<|im_end|>"))
        self._template = _template(self.path.parent, has_chatml, self._piece(self.bos_id), self._piece(self.eos_id))

    def _piece(self, i: int | None) -> str:
        return self.sp.id_to_piece(i) if i is not None else ""

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ids = self.sp.encode(text)
        return ([self.bos_id] if add_bos and self.bos_id is not None else []) + ids

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode([int(i) for i in ids])

    def token_id(self, piece: str) -> int | None:
        i = self.sp.piece_to_id(piece)
        return i if i != self.sp.unk_id() or piece == self.sp.id_to_piece(self.sp.unk_id()) else None

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self._template.render(messages, add_generation_prompt)


class HFTokenizer:
    """A Hugging Face fast tokenizer file (``tokenizer.json``), through the ``tokenizers`` package."""

    def __init__(self, path: Path, bos: str | None = None, eos: str | None = None, pad: str | None = None) -> None:
        from tokenizers import Tokenizer

        self.path = Path(path)
        self.tok = Tokenizer.from_file(str(self.path))
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
        config: dict[str, Any] = {}
        if (self.path.parent / HF_CONFIG).is_file():
            config = json.loads((self.path.parent / HF_CONFIG).read_text())
        self.bos_id = self.token_id(bos or _token_text(config.get("bos_token")) or "")
        self.eos_id = self.token_id(eos or _token_text(config.get("eos_token")) or "")
        self.pad_id = self.token_id(pad or _token_text(config.get("pad_token")) or "")
        has_chatml = all(self.token_id(t) is not None for t in ("<|im_start|>", "<|im_end|>"))
        bos_text = self.tok.id_to_token(self.bos_id) if self.bos_id is not None else ""
        eos_text = self.tok.id_to_token(self.eos_id) if self.eos_id is not None else ""
        self._template = _template(self.path.parent, has_chatml, bos_text, eos_text)

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ids = self.tok.encode(text, add_special_tokens=False).ids
        return ([self.bos_id] if add_bos and self.bos_id is not None else []) + ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_id(self, piece: str) -> int | None:
        return self.tok.token_to_id(piece) if piece else None

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self._template.render(messages, add_generation_prompt)


def _id_or_none(i: int) -> int | None:
    return i if i >= 0 else None


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):  # {"content": "<s>", ...} in older tokenizer_config.json files
        value = value.get("content")
    return value if isinstance(value, str) else None


def load_tokenizer(folder: str | Path) -> TextTokenizer:
    """The tokenizer kept in a model folder (or a tokenizer stage folder): ``tokenizer.model`` when there is
    one, else ``tokenizer.json``."""
    folder = Path(folder)
    if folder.is_file():
        return SentencePieceTokenizer(folder) if folder.suffix == ".model" else HFTokenizer(folder)
    if (folder / SP_MODEL).is_file():
        return SentencePieceTokenizer(folder / SP_MODEL)
    if (folder / HF_TOKENIZER).is_file():
        return HFTokenizer(folder / HF_TOKENIZER)
    raise FileNotFoundError(f"no tokenizer in {folder}: expected {SP_MODEL} or {HF_TOKENIZER}")
