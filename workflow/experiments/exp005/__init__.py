"""Experiment 005, words or concepts: translation, repetition and cloze prompts between
languages read through the lenses at every layer (latent language), and the patchscope lens.
Its word list first (``words``)."""
