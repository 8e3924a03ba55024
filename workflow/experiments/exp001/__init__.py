"""Experiment 001, layers and logits: the normalised (and tuned) logit lens at every layer.

``run`` runs the probes and writes ``results/001/output-{model}.json`` and its records;
``analysis`` computes the facts the evaluations use, ``digest`` writes them for an LLM's
prompt, ``sections`` the offline analyst's sections and ``plots`` the figures.
"""
