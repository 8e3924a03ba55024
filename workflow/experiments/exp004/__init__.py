"""Experiment 004: which component writes the answer (direct logit attribution per block and
head; component patching and attribution patching follow)."""
