"""Model exchange: consolidated checkpoints, Hugging Face and GGUF export and import, tokenizers."""
