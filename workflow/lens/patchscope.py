"""The patchscope lens (Ghandeharioun et al. 2024, "Patchscopes: A Unifying Framework for
Inspecting Hidden Representations of Language Models"; nnterp's ``patchscope_lens``): what a
residual encodes, read out by the model itself instead of by its unembedding.

A residual of the source prompt at layer l is written into an inspection prompt (a few
"word -> word" repetitions ending in a placeholder "?") at the placeholder's position and at
layer l (or a fixed target layer), and the model runs on from there; its next-token
distribution at the inspection prompt's last position is what the state encodes, often
layers before the logit lens can read it. With the placeholder last (INSPECTION_PROMPT,
nnterp's default) the reading is the next token the state predicts, in a context that asks
for a word; with the placeholder before an arrow (IDENTITY_PROMPT at -2) it is the token the
state stands for (the paper's token-identity patchscope). ``PatchscopeTranslator`` is that as a change of
basis ``(hidden, layer) -> hidden`` before the lens's head, the shape the tuned lens's
translators have, so the lens statistics stream it the same way; it runs on every backend
whose ``blocks`` run the model from a layer on (the PyTorch backends' ``BlockRunner``,
llama.cpp's ``EngineBlocks``, which writes the state into llama.cpp's graph).
"""

from __future__ import annotations

from typing import Any

import torch

from workflow.base.errors import UserError

from workflow.config.settings import PATCHSCOPE_PROMPT, PatchscopeSettings
from workflow.model.backends import Patches

# The inspection prompt of the patchscope lens: repetitions teach "say the word again"; the
# state is written at the placeholder "?" (its last token) and the next token read there.
INSPECTION_PROMPT = PATCHSCOPE_PROMPT
PLACEHOLDER = -1
# The token-identity variant: the state written at the "?" before the arrow (-2), the token
# after the arrow read: what token the state stands for.
IDENTITY_PROMPT = INSPECTION_PROMPT + " ->"


def patchscope_translator(model: Any, settings: PatchscopeSettings) -> PatchscopeTranslator:
    """The translator of a loaded model (``workflow.model.load.LoadedModel``) for ``settings``:
    its inspection prompt tokenised by the model's tokenizer."""
    ids = model.tokenizer(settings.prompt, add_special_tokens=True)["input_ids"]
    if not -len(ids) <= settings.position < len(ids):
        raise UserError(f"config key patchscope.position: {settings.position} is not a token of the inspection prompt "
                        f"{settings.prompt!r} ({len(ids)} tokens for model {model.key!r})")
    if settings.target_layer is not None and settings.target_layer > model.n_layers:
        raise UserError(f"config key patchscope.target_layer: {settings.target_layer} is past model {model.key!r}'s "
                        f"{model.n_layers} layers")
    return PatchscopeTranslator(model.backend, ids, settings.position, settings.target_layer)


class PatchscopeTranslator:
    """``translator(hidden [n, d], layer) -> [n, d]``: each row of ``hidden`` written into the
    inspection prompt ``inspection_ids`` at ``position`` (default the placeholder before its
    arrow) and at layer
    ``target_layer`` (None: ``layer`` itself), the model's blocks run from there, and the
    residual after the last block at the inspection prompt's last position returned (the
    lens's head decodes it). Layers count as the records do: 0 enters the first block, k
    follows block k. With the target layer the source layer and the position the last, the
    last layer runs no block after the write: there it is the logit lens
    (``final_is_identity``); at the placeholder it is not (the arrow after it is read)."""

    def __init__(self, backend: Any, inspection_ids: list[int], position: int = PLACEHOLDER,
                 target_layer: int | None = None):
        if not inspection_ids:
            raise ValueError("the patchscope's inspection prompt has no tokens")
        self.backend = backend
        self.ids = [int(t) for t in inspection_ids]
        self.position = position % len(self.ids)
        n_layers = backend.n_layers
        if target_layer is not None and not 0 <= target_layer <= n_layers:
            raise ValueError(f"the patchscope's target layer {target_layer} is not one of 0 to {n_layers}")
        self.target_layer = target_layer
        self.final_is_identity = target_layer is None and self.position == len(self.ids) - 1
        residuals, _ = backend.capture(self.ids, "all")  # [L+1, T, d]: the inspection prompt's own
        self.residuals = residuals

    def reads(self, layer: int) -> bool:
        """Whether a state of source layer ``layer`` reaches the reading: some block runs after
        the write, or the write is at the position read."""
        start = layer if self.target_layer is None else self.target_layer
        return start < self.backend.n_layers or self.position == len(self.ids) - 1

    def __call__(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        start = layer if self.target_layer is None else self.target_layer
        base = self.residuals[start]
        rows = base.to(hidden.device).expand(hidden.shape[0], -1, -1).clone()
        rows[:, self.position] = hidden.to(base.dtype)
        out = self.backend.blocks.run(self.ids, rows, start, Patches())
        return out.to(hidden.device, hidden.dtype)
