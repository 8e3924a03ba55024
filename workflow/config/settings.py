"""The lens settings (config key ``lens``), in one object with its defaults written once.
Read while planning too (the rules' resources), so nothing here imports torch at import
time."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

# The patchscope lens's inspection prompt (Ghandeharioun et al. 2024; nnterp's default): the
# state is written at the placeholder "?", its last token, and the next token read there.
PATCHSCOPE_PROMPT = "cat -> cat\n1135 -> 1135\nhello -> hello\n?"


@dataclass(frozen=True)
class PatchscopeSettings:
    """Config key ``patchscope``: the inspection prompt, the token of it the state is written
    into (negative: from the end) and the layer it is written at (None: the layer it was read
    at)."""

    prompt: str = PATCHSCOPE_PROMPT
    position: int = -1
    target_layer: int | None = None

    @classmethod
    def from_config(cls, patchscope: dict[str, Any]) -> PatchscopeSettings:
        return cls(**{k: patchscope[k] for k in cls.__dataclass_fields__ if k in patchscope})

    def recorded(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "position": self.position, "target_layer": self.target_layer}


# The default cap on the lens's logits buffers, in MiB (config lens.working_memory_mb).
WORKING_MEMORY_MB = 128
# positions: auto records every position of a probe set up to this size, the last beyond.
AUTO_ALL_POSITIONS = 64
HALF_TOLERANCE = 2e-2
FLOAT32_TOLERANCE = 1e-4


@dataclass(frozen=True)
class LensSettings:
    use_norm_lens: bool = True
    use_fp32_unembed: bool = True
    positions: str = "all"
    top_k: int = 5
    identity_tolerance: float | None = None
    working_memory_mb: int = WORKING_MEMORY_MB  # cap on the lens's logits buffers (bench/README.md)

    @classmethod
    def from_config(cls, lens: dict[str, Any]) -> LensSettings:
        known = {k: lens[k] for k in cls.__dataclass_fields__ if k in lens}
        return cls(**known)

    def for_probes(self, n_probes: int) -> LensSettings:
        """These settings with ``positions: auto`` resolved: all positions for up to
        AUTO_ALL_POSITIONS probes, the last one for more."""
        if self.positions != "auto":
            return self
        return replace(self, positions="all" if n_probes <= AUTO_ALL_POSITIONS else "last")

    def tolerance(self, dtype) -> float:
        """The identity check's tolerance for a model computing in ``dtype`` (a torch dtype)."""
        if self.identity_tolerance is not None:
            return float(self.identity_tolerance)
        import torch

        return FLOAT32_TOLERANCE if dtype == torch.float32 else HALF_TOLERANCE

    def recorded(self) -> dict[str, Any]:
        return {
            "use_norm_lens": self.use_norm_lens,
            "use_fp32_unembed": self.use_fp32_unembed,
            "positions": self.positions,
            "top_k": self.top_k,
        }
