"""Fixtures of the Medusa tests: the generation tests' tokenizer."""

from tests.infer.conftest import sp_tokenizer  # noqa: F401
