"""The pipeline's lens on a CUDA device: skipped where there is none (CI has none).

On a GPU machine: ``python -m pytest tests/test_cuda.py``. The tiny models go through the
pipeline's own loader onto the device in float32 and bfloat16; ``read_probes`` checks on the
device that the lens at the last layer reproduces the model's own output (it raises
otherwise), and the records must equal the CPU's float32 records: to float rounding in
float32, and within bfloat16 rounding of the model's activations in bfloat16.
"""

import pytest
import torch

from workflow.config.settings import LensSettings
from workflow.lens.session import model_metadata
from workflow.lens.run import read_probes
from workflow.model.load import load_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here: run on a GPU machine")

# dtype -> tolerances against the CPU's float32 records: probabilities (relative, absolute),
# entropy and KL (nats). bfloat16 keeps 8 bits of mantissa through every layer: on an H100
# the tiny Gemma 3's probabilities moved by up to 5.8% from float32 (Llama's less).
TOLERANCES = {"float32": (0, 2e-6, 2e-5), "bfloat16": (0.1, 1e-3, 0.05)}


@pytest.mark.parametrize("dtype", list(TOLERANCES))
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_cuda_records_equal_the_cpu_records(arch, dtype, tiny_dirs, loaded, probes):
    model = load_model(f"tiny-{arch}", {"source": "local", "path": str(tiny_dirs[arch])}, None, device="cuda", dtype=dtype)
    read = read_probes(model, probes, LensSettings(top_k=3))
    rows, cpu_rows = read.rows, read_probes(loaded[arch], probes, LensSettings(top_k=3)).rows
    metadata = model_metadata(model)
    assert metadata["device"].startswith("cuda") and metadata["lens_kernel"] == "torch"
    assert read.identity_check["max_abs_prob_diff"] <= read.identity_check["tolerance"]
    prob_rel, prob_abs, nats_tol = TOLERANCES[dtype]
    assert len(rows) == len(cpu_rows) > 0
    for gpu, cpu in zip(rows, cpu_rows):
        assert (gpu["probe"], gpu["lens"], gpu["layer"], gpu["position"]) == (cpu["probe"], cpu["lens"], cpu["layer"], cpu["position"])
        assert gpu["answer_prob"] == pytest.approx(cpu["answer_prob"], rel=prob_rel, abs=prob_abs)
        assert gpu["topk_probs"] == pytest.approx(cpu["topk_probs"], rel=prob_rel, abs=prob_abs)
        assert gpu["entropy"] == pytest.approx(cpu["entropy"], abs=nats_tol)
        assert gpu["kl_to_final"] == pytest.approx(cpu["kl_to_final"], abs=nats_tol)
        if dtype == "float32":
            assert gpu["topk_tokens"] == cpu["topk_tokens"] and gpu["answer_rank"] == cpu["answer_rank"]
