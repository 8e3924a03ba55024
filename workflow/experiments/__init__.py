"""The experiments, one package each (exp001, ...): leaves that register themselves with the evaluation chain."""
