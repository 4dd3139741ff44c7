"""Weight quantization: round-to-nearest, NF4 and GPTQ, and a packed on-disk format."""
