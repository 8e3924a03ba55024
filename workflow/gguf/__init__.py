"""GGUF files: the header, the architecture tables, streaming and dequantising weights, preparing a model."""
