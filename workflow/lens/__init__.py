"""The lens on a loaded model: reading out every layer, the tuned lens, generation, the records."""
