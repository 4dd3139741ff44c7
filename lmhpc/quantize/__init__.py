"""Weight quantization (round-to-nearest, GPTQ, NF4, torchao int8), a packed on-disk format, quantized linear
layers that dequantize on the fly, and the quantize stage."""
