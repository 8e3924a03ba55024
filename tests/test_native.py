"""The fused CPU kernel of the streamed lens: building, its arithmetic, and falling back.

Its statistics against independent computations are checked by the streaming tests in
test_lens_math.py, test_lens_identity.py and test_tuned.py, which run with both kernels.
"""

import logging
import platform
import shutil

import numpy as np
import pytest
import torch

from workflow.native import build as native_build
from workflow.native import lens_block as native
from workflow.base.errors import UserError
from workflow.lens.readout import EXP_FLOOR, REBASE_ABOVE


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """A private build cache and no loaded library, before and after."""
    monkeypatch.setenv("LAYERWISE_LENS_CACHE", str(tmp_path / "cache"))
    native._library.cache_clear()
    yield tmp_path / "cache"
    native._library.cache_clear()


@pytest.fixture
def built(monkeypatch):
    monkeypatch.setenv(native.ENV, "native")
    native._library.cache_clear()
    if native.build_error() is not None:
        pytest.skip(f"the fused kernel cannot be built here ({native.build_error()})")
    yield
    native._library.cache_clear()


def compiler_present() -> bool:
    return any(shutil.which(name) for name in ("cc", "gcc", "clang"))


@pytest.mark.skipif(not compiler_present(), reason="no C compiler on this machine: the torch path is used and tested")
def test_kernel_builds_and_loads_where_a_compiler_exists(fresh, monkeypatch):
    monkeypatch.delenv(native.ENV, raising=False)
    assert native.available()
    built = list(fresh.glob("lens_block-*.so"))
    assert len(built) == 1 and not list(fresh.glob(".lens_block-*"))  # no partial file left behind


@pytest.mark.skipif(not compiler_present(), reason="no C compiler on this machine")
def test_builds_are_cached_and_keyed_by_the_source(fresh, monkeypatch, tmp_path):
    first = native.build()
    stamp = first.stat().st_mtime_ns
    assert native.build() == first and first.stat().st_mtime_ns == stamp  # not rebuilt
    changed = tmp_path / "lens_block.c"
    changed.write_text(native.SOURCE.read_text() + "\n/* edited */\n")
    monkeypatch.setattr(native, "SOURCE", changed)
    assert native.build() != first


def one_block(z: torch.Tensor, answer: torch.Tensor, n_pos: int, shift: torch.Tensor, library=None) -> tuple[dict, torch.Tensor]:
    rows, width = z.shape
    state = {name: torch.zeros(rows, dtype=torch.float64) for name in ("S", "Q", "cross", "delta")}
    state |= {"shift": shift.double().clone(), "count": torch.zeros(rows, dtype=torch.int64), "block_max": torch.empty(rows)}
    state["final_prev"] = torch.zeros(n_pos, dtype=torch.float64)
    e_out = torch.empty(n_pos, width)
    native.lens_block(z.contiguous(), answer, REBASE_ABOVE, n_pos, state, e_out, library=library)
    return state, e_out


def instruction_sets() -> list[str]:
    """x86-64 levels to build for: plain SSE2, AVX2 (x86-64-v3, what an AMD EPYC without
    AVX-512 runs), and AVX-512 (x86-64-v4) where this processor can run it."""
    flags = native_build._processor().split()
    levels = ["x86-64", "x86-64-v3"] if "avx2" in flags and "fma" in flags else ["x86-64"]
    return levels + (["x86-64-v4"] if "avx512f" in flags else [])


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="instruction-set levels are x86-64's")
def test_every_instruction_set_gives_the_same_bits(built, tmp_path):
    """A build for another processor (AVX2 on an AVX-512 machine, and the reverse) computes
    exactly what this processor's build does: the order of every sum is fixed in the source,
    so results do not change between machines."""
    gen = torch.Generator().manual_seed(11)
    n_pos, layers, width = 5, 6, 2 * 512 + 77  # several chunks and a ragged tail
    z = torch.randn(layers * n_pos, width, generator=gen) * 8
    z[3, 100] = 150.0
    shift = z[:, :9].amax(-1)
    answer = z[: (layers - 1) * n_pos, 3].clone()
    mine = one_block(z, answer, n_pos, shift)
    for march in instruction_sets():
        other = one_block(z, answer, n_pos, shift, native.load(native.build(directory=tmp_path, march=march)))
        for name, value in mine[0].items():
            assert torch.equal(other[0][name], value), (march, name)
        assert torch.equal(other[1], mine[1]), march


def test_exp_is_within_two_ulp_of_the_exact_value(built):
    # One final row holding every value from the floor to the rebasing limit (and below the floor).
    t = torch.cat([torch.linspace(EXP_FLOOR, REBASE_ABOVE, 200_000), torch.tensor([-500.0, -88.0, 0.0, 1e-30])])
    state, e_out = one_block(t[None], torch.zeros(0), 1, torch.zeros(1))
    exact = np.exp(np.maximum(t.double().numpy(), EXP_FLOOR))
    ulp = np.spacing(exact.astype(np.float32)).astype(np.float64)
    assert np.abs(e_out[0].double().numpy() - exact).max() <= 2 * ulp.max() and (np.abs(e_out[0].double().numpy() - exact) / ulp).max() <= 2
    assert state["S"][0].item() == pytest.approx(exact.sum(), rel=1e-6)
    assert state["Q"][0].item() == pytest.approx((exact * t.double().numpy()).sum(), rel=1e-6)


def test_one_block_against_float64(built):
    """Counts, maxima, sums against a reference and the cross sums against each row's final row."""
    gen = torch.Generator().manual_seed(5)
    n_pos, layers, width = 3, 4, 333
    z = torch.randn(layers * n_pos, width, generator=gen) * 6
    z[2, 17] = 200.0  # far above its reference: this row moves it
    shift = z[:, :5].amax(-1)
    answer = z[: (layers - 1) * n_pos, 7].clone()
    state, e_out = one_block(z, answer, n_pos, shift)
    assert torch.equal(state["block_max"], z.amax(-1))
    assert torch.equal(state["count"][: len(answer)], (z[: len(answer)] > answer[:, None]).sum(-1))
    moved = z.amax(-1).double() - shift.double() > REBASE_ABOVE
    assert moved.tolist() == [r == 2 for r in range(len(z))]
    reference = torch.where(moved, z.amax(-1).double(), shift.double())
    assert torch.equal(state["shift"], reference)
    t = (z - reference.float()[:, None]).double()  # the kernel's t: a float32 difference
    e = t.clamp_min(EXP_FLOOR).exp()
    assert torch.allclose(state["S"], e.sum(-1), rtol=1e-6)
    assert torch.allclose(state["Q"], (e * t).sum(-1), rtol=1e-6, atol=1e-9)
    final = (layers - 1) * n_pos + torch.arange(len(z)) % n_pos
    assert torch.allclose(e_out.double(), e[final[-n_pos:]], rtol=2.4e-7, atol=0)  # 2 ulp
    cross = (e[final] * t).sum(-1)
    others = torch.arange(len(z)) < (layers - 1) * n_pos
    assert torch.allclose(state["cross"][others], cross[others], rtol=1e-6, atol=1e-9)
    assert torch.equal(state["cross"][~others], state["Q"][~others])  # a final row against itself


def test_without_a_compiler_the_torch_path_runs_and_says_why(fresh, monkeypatch, caplog):
    def no_compiler():
        raise RuntimeError("no C compiler found (set CC, or install gcc or clang)")

    monkeypatch.setattr(native_build, "_compiler", no_compiler)
    monkeypatch.delenv(native.ENV, raising=False)
    with caplog.at_level(logging.WARNING, logger="workflow.native"):
        assert not native.available()
    assert "no C compiler found" in caplog.text and "torch path" in caplog.text
    native._library.cache_clear()
    monkeypatch.setenv(native.ENV, "native")
    with pytest.raises(UserError, match="LAYERWISE_LENS_KERNEL=native.*no C compiler"):
        native.available()


@pytest.mark.skipif(not compiler_present(), reason="no C compiler on this machine")
def test_a_failing_build_falls_back_with_the_compilers_message(fresh, monkeypatch, tmp_path, caplog):
    broken = tmp_path / "lens_block.c"
    broken.write_text("this is not C;\n")
    monkeypatch.setattr(native, "SOURCE", broken)
    monkeypatch.delenv(native.ENV, raising=False)
    with caplog.at_level(logging.WARNING, logger="workflow.native"):
        assert not native.available()
    assert "failed on lens_block.c" in caplog.text
    assert not list(fresh.glob("*lens_block*"))  # nothing half-built left in the cache


def test_an_unknown_choice_is_refused(fresh, monkeypatch):
    monkeypatch.setenv(native.ENV, "fast")
    with pytest.raises(UserError, match="LAYERWISE_LENS_KERNEL='fast' is not one of auto, native, torch"):
        native.available()


def test_records_say_which_kernel_ran(kernel, loaded, probes):
    from workflow.lens.session import model_metadata

    assert model_metadata(loaded["llama"])["lens_kernel"] == kernel


def test_auto_leaves_many_threads_to_torch(built, monkeypatch):
    """Above MAX_THREADS the kernel's threads lose to PyTorch's spinning workers (measured)."""
    monkeypatch.setattr(native.torch, "get_num_threads", lambda: native.MAX_THREADS + 1)
    assert native.preferred()  # LAYERWISE_LENS_KERNEL=native: always
    monkeypatch.setenv(native.ENV, "auto")
    assert not native.preferred()
    monkeypatch.setattr(native.torch, "get_num_threads", lambda: native.MAX_THREADS)
    assert native.preferred()
    monkeypatch.setenv(native.ENV, "torch")
    native._library.cache_clear()
    assert not native.preferred()
