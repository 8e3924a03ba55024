"""Experiment 002, activation patching: where an answer is caused, beside where 001's
lens reads it.

``patching`` is the batched sweep over layers x positions (denoise, noise, causal
tracing); ``run`` writes ``results/002/output-{model}.json`` and its records;
``analysis`` computes the facts (reading experiment 001's outputs for the same model),
``digest`` writes them for an LLM's prompt, ``sections`` is the offline analyst's
sections and ``plots`` the figures.
"""
