"""Evaluations: templates, digests of the outputs, providers and the offline analyst."""
