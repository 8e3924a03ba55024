"""The committed results of the default run (results/, both embedded models) against
independent computations: the final top-1 against plain transformers on the same GGUF file,
experiment 002's patching against that model patched by hooks, the tuned lens against the
logit lens on held-out text (tests/embedded_checks.py). tests/test_fresh_clone.py shows that
these results are current (a clone's dry run plans nothing), so they are what the code makes;
tests/test_e2e.py (`make test-all`) makes them again from nothing and checks that run too.
"""

import pytest

from embedded_checks import (  # noqa: F401 (the shared checks, run on this module's results_root)
    plain_transformers,
    test_components_equal_plain_transformers,
    test_final_top1_matches_plain_transformers,
    test_patching_equals_plain_transformers_hooks,
    test_tuned_lens_beats_the_logit_lens_on_held_out_text,
)
from pipeline import REPO


@pytest.fixture(scope="module")
def results_root():
    """The repository itself: its committed results/."""
    return REPO
