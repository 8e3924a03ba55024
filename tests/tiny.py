"""Tiny random models and a tiny tokenizer, built offline from configs in memory."""

from __future__ import annotations

from pathlib import Path

import torch

CORPUS = [
    "The capital of Germany is Berlin. Berlin is the capital of Germany.",
    "The capital of France is Paris. Paris is the capital of France.",
    "Give the city name only, plain text. The capital of Japan is Tokyo.",
    "Tokyo, Canberra, Rome and Madrid are capitals; \"quoted\" text, commas, and newlines\nmatter.",
    "Ünïcödé tëxt: naïve café, Köln, Zürich, 東京.",
]
SPECIAL = ["<pad>", "<bos>", "<eos>", "<unk>"]


def make_tokenizer(vocab_size: int = 320):
    """A byte-level BPE tokenizer trained on CORPUS that prepends <bos> like Llama's does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 20, trainer=trainer)
    bos = tok.token_to_id("<bos>")
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", bos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )


def _config(arch: str, vocab: int, tokenizer):
    from transformers import Gemma3TextConfig, LlamaConfig

    common = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.3,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if arch == "llama":
        return LlamaConfig(**common, tie_word_embeddings=False)
    if arch == "gemma3":
        # Soft-capping is on so the identity tests cover a post-unembedding step.
        return Gemma3TextConfig(
            **common, head_dim=16, sliding_window=8, final_logit_softcapping=8.0, tie_word_embeddings=True
        )
    raise ValueError(arch)


def make_model_dir(path: Path, arch: str, seed: int = 0) -> Path:
    """Save a tiny random ``arch`` model with the tiny tokenizer under ``path``."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    tokenizer = make_tokenizer()
    config = _config(arch, len(tokenizer), tokenizer)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        # Non-trivial norm weights: a lens that skipped or copied the norm would show.
        for module in model.modules():
            if "RMSNorm" in type(module).__name__:
                module.weight.normal_(0.5, 0.3)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def architecture_configs(tokenizer) -> dict:
    """Tiny configs of the conformance suite's architectures (3 layers, width 64)."""
    import transformers as T

    v = len(tokenizer)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    decoder = dict(vocab_size=v, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, **ids)
    gpt = dict(vocab_size=v, n_embd=64, n_layer=3, n_head=4, n_positions=256, **ids)
    return {
        "gpt2": T.GPT2Config(**gpt),
        "gptj": T.GPTJConfig(**gpt, rotary_dim=8),
        "gpt_neox": T.GPTNeoXConfig(**{k: v_ for k, v_ in decoder.items()}, max_position_embeddings=256),
        "opt": T.OPTConfig(
            vocab_size=v, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, ffn_dim=128,
            max_position_embeddings=256, word_embed_proj_dim=64, **ids,
        ),
        "llama": T.LlamaConfig(**decoder, num_key_value_heads=2),
        "mistral": T.MistralConfig(**decoder, num_key_value_heads=2),
        "qwen2": T.Qwen2Config(**decoder, num_key_value_heads=2),
        "qwen3": T.Qwen3Config(**decoder, num_key_value_heads=2, head_dim=16),
        "gemma": T.GemmaConfig(**decoder, num_key_value_heads=1, head_dim=16),
        "gemma2": T.Gemma2Config(**decoder, num_key_value_heads=2, head_dim=16, final_logit_softcapping=5.0, sliding_window=8),
        "gemma3": T.Gemma3TextConfig(**decoder, num_key_value_heads=2, head_dim=16, sliding_window=8),
        "phi3": T.Phi3Config(**decoder, num_key_value_heads=2),
        "llama4": T.Llama4TextConfig(
            **decoder, intermediate_size_mlp=128, num_key_value_heads=2, head_dim=16, num_local_experts=2
        ),
    }


def save_random(path: Path, config, tokenizer, seed: int = 0) -> Path:
    """A random model of ``config`` with peaked distributions and non-trivial norms."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config.initializer_range = 0.3
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for module in model.modules():
            kind = type(module).__name__
            if "Norm" in kind and getattr(module, "weight", None) is not None:
                module.weight.normal_(0.5, 0.3)
                if getattr(module, "bias", None) is not None:
                    module.bias.normal_(0.0, 0.3)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_qwen2_dir(path: Path, seed: int = 0) -> Path:
    """A tiny random Qwen2 (attention biases, untied head) with the tiny tokenizer."""
    from transformers import Qwen2Config

    tokenizer = make_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return save_random(path, config, tokenizer, seed)


def random_translators(model, seed: int = 5, weight_std: float = 0.05, bias_std: float = 0.5):
    """A tuned lens (``workflow.lens.tuned.TunedLens``) for ``model`` with seeded random
    translators: far enough from the identity that a lens skipping them would show."""
    from workflow.lens.tuned import TunedLens

    generator = torch.Generator().manual_seed(seed)
    lens = TunedLens(model.n_layers, model.d_model)
    with torch.no_grad():
        lens.weight.copy_(torch.randn(lens.weight.shape, generator=generator) * weight_std)
        lens.bias.copy_(torch.randn(lens.bias.shape, generator=generator) * bias_std)
    return lens
