"""The layout of a prepared model's folder (``resources/models/KEY``), named once for the
code that writes it (``workflow.gguf.prepare``) and the code that reads it (``workflow.model.load``,
``workflow.gguf.weights``, the API)."""

# What was prepared from which source (its fingerprint), how, and when it is stale.
MANIFEST = "manifest.json"
# A ``weights: quantised`` preparation's copy of transformers' parsed GGUF config, which
# its tensor processors read (besides the tokenizer and config every preparation writes).
PARSED_CONFIG = "gguf-config.json"
