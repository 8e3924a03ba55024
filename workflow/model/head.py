"""The lens's head: the model's own final norm and unembedding (``LensHead``), and an
unembedding whose weights stay offloaded until the lens decodes (``OffloadedLinear``)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch

class OffloadedLinear(torch.nn.Module):
    """An unembedding whose weights accelerate keeps offloaded (model placement beyond
    the budgets, workflow/model/load.py): read onto the lens's device when the lens decodes,
    not held. Calls within one decode share the weights read: while any caller holds
    them, the next call returns the same tensors (the streamed lens checks that the
    recorded and the reference head share one matrix)."""

    def __init__(self, module: torch.nn.Module, device: torch.device | str, dtype: torch.dtype | None = None):
        super().__init__()
        self._module = [module]  # not registered: its hooks and meta tensors stay its own
        self.lens_device = torch.device(device)
        self.dtype = dtype
        self._held: tuple | None = None

    def as_float(self) -> OffloadedLinear:
        return OffloadedLinear(self._module[0], self.lens_device, torch.float32)

    def materialised(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        import weakref

        if self._held is not None:
            weight, bias = self._held[0](), self._held[1]() if self._held[1] is not None else None
            if weight is not None:
                return weight, bias
        from accelerate.utils import align_module_device

        module = self._module[0]
        with align_module_device(module, self.lens_device):
            weight, bias = module.weight, module.bias
        if self.dtype is not None:
            weight = weight.to(self.dtype)
            bias = bias.to(self.dtype) if bias is not None else None
        self._held = (weakref.ref(weight), weakref.ref(bias) if bias is not None else None)
        return weight, bias

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        weight, bias = self.materialised()
        return torch.nn.functional.linear(hidden, weight, bias)

    def head_state(self) -> dict[str, torch.Tensor]:
        weight, bias = self.materialised()
        return {"weight": weight, **({"bias": bias} if bias is not None else {})}


def head_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A head module's tensors by name, the same whichever way the model is held: a
    TransformerBridge component's names without its wrapper's prefix, an offloaded
    unembedding's read from where it is."""
    if isinstance(module, OffloadedLinear):
        return module.head_state()
    return {name.removeprefix("_original_component."): tensor for name, tensor in module.state_dict().items()}


@dataclass
class LensHead:
    """Decodes residual vectors through the model's own final norm and unembedding.

    ``norm`` and ``unembed`` are the model's modules (or float32 copies of them when
    ``use_fp32_unembed`` is on and the model runs in half precision), never a
    re-implementation of their formulas.
    """

    norm: torch.nn.Module | None
    unembed: torch.nn.Module
    postprocess: Callable[[torch.Tensor], torch.Tensor]
    compute_dtype: torch.dtype

    @classmethod
    def from_modules(
        cls,
        norm: torch.nn.Module,
        unembed: torch.nn.Module,
        postprocess: Callable[[torch.Tensor], torch.Tensor],
        model_dtype: torch.dtype,
        use_norm_lens: bool = True,
        use_fp32_unembed: bool = True,
    ) -> LensHead:
        if use_fp32_unembed and model_dtype != torch.float32:
            # A float32 copy of the same modules: same code path, float32 arithmetic.
            norm = copy.deepcopy(norm).float()
            unembed = unembed.as_float() if isinstance(unembed, OffloadedLinear) else copy.deepcopy(unembed).float()
            compute_dtype = torch.float32
        else:
            compute_dtype = model_dtype
        return cls(norm if use_norm_lens else None, unembed, postprocess, compute_dtype)

    @torch.no_grad()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float32 logits for residual vectors ``hidden`` of shape [..., d_model]."""
        return self.postprocess(self.unembed(self.normed(hidden))).float()

    @torch.no_grad()
    def normed(self, hidden: torch.Tensor) -> torch.Tensor:
        """The unembedding's input: ``hidden`` through the final norm (when the lens uses it)."""
        h = hidden.to(device=self.device, dtype=self.compute_dtype)
        return self.norm(h) if self.norm is not None else h

    @property
    def device(self) -> torch.device:
        """Where the head's weights are (a model placed across devices keeps it on its main one)."""
        if isinstance(self.unembed, OffloadedLinear):
            return self.unembed.lens_device
        return next(self.unembed.parameters()).device

    def linear(self) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """The unembedding's weight [V, d] and bias, where it is a plain linear map.

        TransformerLens's bridge wraps the model's own ``lm_head``; its original module is
        what computes. Anything else (a custom head) returns None and is decoded whole.
        """
        module = getattr(self.unembed, "original_component", None) or self.unembed
        if isinstance(module, OffloadedLinear):
            return module.materialised()
        if type(module) is not torch.nn.Linear:
            return None
        return module.weight, module.bias
