"""Experiment 003, generation: the lens on every token a model generates.

``run`` generates greedily after each probe's prompt (``workflow.lens.generation``, the key-value
cache on) and writes ``results/003/output-{model}.json`` and its records (001's columns,
``position`` the generated index, ``answer_*`` the generated token); ``analysis`` computes
the facts (where generated tokens settle, by word class), ``digest`` writes them for an
LLM's prompt, ``sections`` the offline analyst's sections and ``plots`` the figures.
"""
