"""Llama 4 Scout at full width, its GGUF larger than this machine's memory: 001's probes through
llama.cpp and through ``weights: quantised``.

    .venv/bin/python bench/scout_width.py [--work /work/scout-bench] [--layers N] [--keep]

Writes a synthetic GGUF with Scout's real layer shapes, directly with gguf-py's ``GGUFWriter``
(the metadata keys and tensor names llama.cpp's converter writes for ``llama4``: see
``Llama4Model`` in convert_hf_to_gguf and workflow/gguf/arch.py): width 5120, 40 query and 8
key-value heads of 128, 16 routed experts of width 8192 and a shared expert of 8192, top-1,
every layer MoE, Scout's Llama 3 frequency scaling (factor 16, a step at 8192) as
``rope_freqs``, a 202,048-token vocabulary. The weights are random but valid blocks: Q4_K
(144 bytes per 256 weights: half-precision d and dmin = 7.5 d, twelve bytes of 6-bit scales
and mins, 128 bytes of nibbles) for every matrix and the token embedding, Q6_K for the output
(as Q4_K_M files have it), F32 norms (ones) and router; d is set per matrix so that a weight's
standard deviation is 2 / sqrt(fan-in) (1 for the embedding). Blocks are tiled from a pool
made once, each tensor starting elsewhere in it, so ~30 GB is written at the disk's speed
with little memory. The layer count is the smallest multiple of four whose file exceeds
1.2 x this machine's MemTotal (/proc/meminfo): 24 layers, about 31 GB, on a 24 GiB machine.

The tokenizer: Llama 4's own (202,048 entries) is not available offline, so the file carries
SmolLM2's (resources/models/smollm2-135m-instruct: gpt2-style BPE, the pre-tokenizer name
``smollm`` the converter writes for it, its merges and special tokens) padded with unused
``[PADn]`` tokens up to 202,048, as the converter pads a vocabulary smaller than the model's.
The probes therefore tokenise as SmolLM2 does; the project's ``source: gguf`` preparation
builds its tokenizer from this metadata.

Then, each way in a fresh child process, the file's page cache dropped before it
(``posix_fadvise(DONTNEED)``: the first pass is cold; the file exceeds the memory, so every
pass reads most of it from disk), the nine default probes of config/config.yaml twice:

- llama.cpp alone: the project's ``LlamaCppModel.run`` with no layer captured, each probe one
  decode (every position's logits, as the lens needs);
- llama.cpp with the lens: ``backend: llamacpp``, ``weights: quantised``
  (``workflow.lens.run.read_probes``, every layer and position);
- weights: quantised (PyTorch): ``backend: hooks``, each module read from the file and
  dequantised just before it runs, under ``placement: {max_memory: {cpu: --budget}}``.

llama.cpp is run with ``use_extra_bufts = false``: with llama.cpp's default (true) an AVX2 CPU
repacks Q4_K weights into anonymous memory at load (``CPU_REPACK`` buffer), so a file larger
than the memory cannot load; ``--repack-check`` shows that on a one-layer file of the same
width. ``LlamaCppModel`` now decides this itself (``repack_fits``: no repacking for a file over
half the memory; ``llamacpp.repack`` overrides it); for code before that, the children here
also turn it off by wrapping ``llama_cpp.llama_model_default_params``.

``--report results.json`` prints the tables of a saved run (the work folder keeps one) without
running anything; ``--mac-ssd`` and ``--mac-cores`` are the extrapolation's assumptions.

Columns: load seconds, seconds for the nine probes (pass 1 cold, pass 2), forward passes per
probe set (llama.cpp: one decode per probe; PyTorch: 16 rows per pass, one per padded length)
and seconds per forward pass and per layer (the model's own forward alone: the lens's work
after it is the rest of the probe set's time), GB read from storage (the process's
``/proc/self/io`` read_bytes), peak RSS (VmHWM, which counts the mapped file's pages) and
peak anonymous RSS (RssAnon, sampled every 50 ms: what the process itself holds), disk
written beyond the GGUF. Then an extrapolation to Scout's 48 layers on a 64 GB Mac, saying
what is measured and what is assumed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
GB = 1e9
TOKENIZER_DIR = REPO / "resources" / "models" / "smollm2-135m-instruct"

# Llama 4 Scout's text model (meta-llama/Llama-4-Scout-17B-16E-Instruct, text_config).
SCOUT = {
    "width": 5120, "heads": 40, "kv_heads": 8, "head_dim": 128, "experts": 16, "expert_ff": 8192,
    "ff_mlp": 16384, "vocab": 202048, "layers": 48, "rope_theta": 500000.0, "context": 10485760, "eps": 1e-5,
    "rope_factor": 16.0, "rope_original_context": 8192,
}
WAYS = ("llama.cpp alone", "llama.cpp with the lens", "weights: quantised (PyTorch)")
POOL_BLOCKS = 524287  # a prime: tiled tensors do not repeat with any row or expert period


# ----------------------------------------------------------------------------- the file


def tensor_table(layers: int) -> list[tuple[str, str, tuple[int, ...], float]]:
    """(name, ggml type, numpy shape (outermost first), weight std) in the order written; the
    names and shapes llama.cpp's llama4 loader asks for (src/models/llama4.cpp)."""
    d, ff, e, v = SCOUT["width"], SCOUT["expert_ff"], SCOUT["experts"], SCOUT["vocab"]
    q, kv = SCOUT["heads"] * SCOUT["head_dim"], SCOUT["kv_heads"] * SCOUT["head_dim"]
    s_d, s_ff = 2 / math.sqrt(d), 2 / math.sqrt(ff)
    table = [("token_embd.weight", "Q4_K", (v, d), 1.0), ("rope_freqs.weight", "F32", (SCOUT["head_dim"] // 2,), 0.0)]
    for i in range(layers):
        b = f"blk.{i}."
        table += [
            (b + "attn_norm.weight", "F32", (d,), 0.0),
            (b + "attn_q.weight", "Q4_K", (q, d), s_d),
            (b + "attn_k.weight", "Q4_K", (kv, d), s_d),
            (b + "attn_v.weight", "Q4_K", (kv, d), s_d),
            (b + "attn_output.weight", "Q4_K", (d, q), 2 / math.sqrt(q)),
            (b + "ffn_norm.weight", "F32", (d,), 0.0),
            (b + "ffn_gate_inp.weight", "F32", (e, d), s_d),
            (b + "ffn_gate_exps.weight", "Q4_K", (e, ff, d), s_d),
            (b + "ffn_up_exps.weight", "Q4_K", (e, ff, d), s_d),
            (b + "ffn_down_exps.weight", "Q4_K", (e, d, ff), s_ff),
            (b + "ffn_gate_shexp.weight", "Q4_K", (ff, d), s_d),
            (b + "ffn_up_shexp.weight", "Q4_K", (ff, d), s_d),
            (b + "ffn_down_shexp.weight", "Q4_K", (d, ff), s_ff),
        ]
    table += [("output_norm.weight", "F32", (d,), 0.0), ("output.weight", "Q6_K", (v, d), s_d)]
    return table


def nbytes(kind: str, shape: tuple[int, ...]) -> int:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[kind]]
    return math.prod(shape) // block * size


def file_bytes(layers: int) -> int:
    return sum(nbytes(k, s) for _, k, s, _ in tensor_table(layers))


def choose_layers(mem_total: int) -> int:
    """The smallest multiple of four (Scout's NoPE period) whose file exceeds 1.2 x the memory."""
    layers = 4
    while file_bytes(layers) <= 1.2 * mem_total:
        layers += 4
    return layers


def mem_total() -> int:
    with open("/proc/meminfo") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("MemTotal:"))


class BlockPool:
    """Random valid blocks of one quantised type, made once, with d set per wanted std."""

    def __init__(self, kind: str, rng):
        import numpy as np
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

        self.kind = kind
        self.type = GGMLQuantizationType[kind]
        self.block_bytes = GGML_QUANT_SIZES[self.type][1]
        raw = rng.integers(0, 256, (POOL_BLOCKS, self.block_bytes), dtype=np.uint8)
        if kind == "Q4_K":  # d, dmin at bytes 0-3; scales/mins 6-bit, at least 16 so no sub-block is flat
            raw[:, 4:8] |= 0x10  # low 6 bits of sc_0..3 (bits 6-7 feed sc_4..7's high part)
            raw[:, 8:12] |= 0x10
            self.d_at = 0
        elif kind == "Q6_K":  # ql[128] qh[64] scales[16] (int8) d (f16) at 208
            raw[:, 192:208] = (rng.integers(16, 48, (POOL_BLOCKS, 16)) * rng.choice([-1, 1], (POOL_BLOCKS, 16))).astype(np.int8).view(np.uint8)
            self.d_at = 208
        self.raw = raw
        # the std of a weight at d = 1 (and dmin = 7.5 for Q4_K: mean about zero), measured
        sample = raw[:4096].copy()
        self._set_d(sample, 1.0)
        self.unit_std = float(quants.dequantize(sample.reshape(-1), self.type).std())
        self._made: dict[float, object] = {}

    def _set_d(self, blocks, d: float) -> None:
        import numpy as np

        blocks[:, self.d_at : self.d_at + 2] = np.array([d], np.float16).view(np.uint8)
        if self.kind == "Q4_K":
            blocks[:, 2:4] = np.array([7.5 * d], np.float16).view(np.uint8)

    def blocks(self, std: float, count: int, start: int):
        """``count`` blocks [count, block bytes] of weights of about ``std``, from ``start`` in the pool."""
        import numpy as np

        if std not in self._made:
            pool = self.raw.copy()
            self._set_d(pool, std / self.unit_std)
            self._made[std] = pool
        pool = self._made[std]
        start %= POOL_BLOCKS
        parts, left = [pool[start:]], count - (POOL_BLOCKS - start)
        while left > 0:
            parts.append(pool[: min(left, POOL_BLOCKS)])
            left -= POOL_BLOCKS
        return np.concatenate(parts)[:count] if len(parts) > 1 else pool[start : start + count]


def rope_factors() -> "np.ndarray":
    """Scout's Llama 3 scaling as the converter writes it (LlamaModel.generate_extra_tensors):
    factor 16, low = high frequency factor 1, original context 8192: 1 below a wavelength of
    8192 positions, 16 above."""
    import numpy as np

    dim, theta = SCOUT["head_dim"], SCOUT["rope_theta"]
    freqs = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    wavelen = 2 * math.pi / freqs
    return np.where(wavelen < SCOUT["rope_original_context"], 1.0, SCOUT["rope_factor"]).astype(np.float32)


def add_tokenizer(writer, vocab_size: int) -> int:
    """SmolLM2's tokenizer as the converter writes a gpt2 vocabulary (``_set_vocab_gpt2``,
    ``get_vocab_base``), padded with unused tokens to ``vocab_size``: its real token count."""
    import gguf
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    reverse = {i: t for t, i in tokenizer.get_vocab().items()}
    added, decoder = tokenizer.get_added_vocab(), tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif reverse[i] in added:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.CONTROL if decoder[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")  # what the converter's checksum table names SmolLM2's pre-tokenizer
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    gguf.SpecialVocab(TOKENIZER_DIR, load_merges=True, n_vocab=len(tokens)).add_to_gguf(writer)
    return len(reverse)


def write_gguf(path: Path, layers: int) -> dict:
    """The synthetic Scout-width file, written tensor by tensor: what it took."""
    import gguf
    import numpy as np

    started = time.perf_counter()
    rng = np.random.default_rng(0)
    tmp = path.with_suffix(".partial")
    writer = gguf.GGUFWriter(tmp, "llama4")
    arch = "llama4"
    writer.add_type("model")
    writer.add_name("Scout-width synthetic (random Q4_K blocks)")
    writer.add_block_count(layers)
    writer.add_context_length(SCOUT["context"])
    writer.add_embedding_length(SCOUT["width"])
    writer.add_feed_forward_length(SCOUT["ff_mlp"])
    writer.add_head_count(SCOUT["heads"])
    writer.add_head_count_kv(SCOUT["kv_heads"])
    writer.add_rope_freq_base(SCOUT["rope_theta"])
    writer.add_layer_norm_rms_eps(SCOUT["eps"])
    writer.add_expert_count(SCOUT["experts"])
    writer.add_expert_used_count(1)
    writer.add_key_length(SCOUT["head_dim"])
    writer.add_value_length(SCOUT["head_dim"])
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    writer.add_vocab_size(SCOUT["vocab"])
    writer.add_rope_dimension_count(SCOUT["head_dim"])
    writer.add_uint32(f"{arch}.interleave_moe_layer_step", 1)
    writer.add_expert_feed_forward_length(SCOUT["expert_ff"])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    real_tokens = add_tokenizer(writer, SCOUT["vocab"])

    table = tensor_table(layers)
    for name, kind, shape, _ in table:
        if kind == "F32":
            writer.add_tensor_info(name, shape, np.dtype(np.float32), nbytes(kind, shape))
        else:
            byte_shape = (*shape[:-1], nbytes(kind, shape[-1:]))  # rows of blocks, as bytes
            writer.add_tensor_info(name, byte_shape, np.dtype(np.uint8), nbytes(kind, shape), raw_dtype=gguf.GGMLQuantizationType[kind])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    pools = {k: BlockPool(k, rng) for k in ("Q4_K", "Q6_K")}
    start = 0
    for name, kind, shape, std in table:
        if kind == "F32":
            if name == "rope_freqs.weight":
                data = rope_factors()
            elif name.endswith("ffn_gate_inp.weight"):
                data = rng.normal(0, std, shape).astype(np.float32)
            else:
                data = np.ones(shape, np.float32)
        else:
            pool = pools[kind]
            count = nbytes(kind, shape) // pool.block_bytes
            data = pool.blocks(std, count, start)
            start += count + 7919
        writer.write_tensor_data(data)
    writer.close()
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    tmp.rename(path)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "bytes": path.stat().st_size, "real_tokens": real_tokens}


# ----------------------------------------------------------------------------- measuring


def drop_cache(path: Path) -> None:
    """The file's pages out of the page cache (clean pages: no root needed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def read_rate(path: Path, size: int = 2 * 2**30) -> float:
    """GB/s reading ``size`` bytes from the middle of the file, its cache dropped first."""
    drop_cache(path)
    total = path.stat().st_size
    size = min(size, total // 2)
    offset = (total - size) // 2 // 2**20 * 2**20
    started = time.perf_counter()
    with open(path, "rb", buffering=0) as fh:
        fh.seek(offset)
        left = size
        while left > 0:
            chunk = fh.read(min(left, 16 * 2**20))
            if not chunk:
                break
            left -= len(chunk)
    rate = (size - left) / (time.perf_counter() - started)
    drop_cache(path)
    return rate


def folder_bytes(folder: Path, skip: Path | None = None) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p != skip)


class Memory(threading.Thread):
    """Samples this process's RssAnon and RssFile every 50 ms, keeping their peaks."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak = {"RssAnon": 0, "RssFile": 0}
        self.running = True

    @staticmethod
    def status() -> dict[str, int]:
        with open("/proc/self/status") as fh:
            return {line.split(":")[0]: int(line.split()[1]) * 1024 for line in fh if line.split(":")[0] in
                    ("VmHWM", "VmRSS", "RssAnon", "RssFile")}

    def run(self):
        while self.running:
            now = self.status()
            for key in self.peak:
                self.peak[key] = max(self.peak[key], now.get(key, 0))
            time.sleep(0.05)


def storage_read() -> int:
    with open("/proc/self/io") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("read_bytes:"))


def no_repack() -> None:
    """llama.cpp's model parameters with its extra (repacking) buffer types off."""
    import llama_cpp

    default = llama_cpp.llama_model_default_params

    def params():
        found = default()
        found.use_extra_bufts = False
        return found

    llama_cpp.llama_model_default_params = params


class Timed:
    """A callable that counts its calls and their seconds."""

    def __init__(self, fn):
        self.fn, self.calls, self.seconds = fn, 0, 0.0

    def __call__(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.calls += 1
            self.seconds += time.perf_counter() - started


def child(args) -> dict:
    """One way, in this fresh process (cwd: the work folder, so the digest cache is there)."""
    import yaml

    memory = Memory()
    memory.start()
    probes = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["probes"][: args.probes]
    gguf_path = Path(args.gguf)
    entry = {"source": "gguf", "path": str(gguf_path), "weights": "quantised"}
    out: dict = {"way": args.way, "passes": []}
    if args.way == "prepare":
        from workflow.gguf.prepare import prepare_model
        from workflow.provenance.record import sha256_file

        before = storage_read()
        started = time.perf_counter()
        sha256_file(gguf_path)
        out["hash_s"] = time.perf_counter() - started
        out["hash_read"] = storage_read() - before
        started = time.perf_counter()
        prepare_model("scout-width", entry, Path(args.prepared), configfile=None)
        out["prepare_s"] = time.perf_counter() - started
    else:
        import numpy as np
        import torch

        import workflow  # noqa: F401 (MKL's reproducible mode)
        import transformers.models.llama4.modeling_llama4  # noqa: F401 (libraries before the model is timed)

        if args.repack == "off":
            no_repack()
        before_load = storage_read()
        started = time.perf_counter()
        if args.way == "llama.cpp alone":
            from workflow.model.llamacpp import LlamaCppModel

            engine = LlamaCppModel(gguf_path, key="scout-width")
            ids = [engine.tokenize(p["prompt"]) for p in probes]
            run = Timed(engine.run)
            n_layers = engine.n_layers
        else:
            from workflow.config.settings import LensSettings
            from workflow.lens.run import read_probes
            from workflow.model.load import load_model

            backend = "llamacpp" if args.way == "llama.cpp with the lens" else "hooks"
            placement = {"max_memory": {"cpu": args.budget}} if backend == "hooks" else None
            model = load_model("scout-width", {**entry, "backend": backend}, args.prepared, device="cpu",
                               dtype="float32", placement=placement, configfile=None)
            n_layers = model.n_layers
            if backend == "llamacpp":
                run = Timed(model.backend.engine.run)
                model.backend.engine.run = run
            else:
                run = Timed(model.backend._forward_pass)
                model.backend._forward_pass = run
            from workflow.gguf.weights import file_weights

            weights = file_weights(model.backend.hf_model)
        out["load_s"] = time.perf_counter() - started
        out["load_read"] = storage_read() - before_load
        out["after_load"] = Memory.status()
        out["n_layers"] = n_layers
        for number in range(args.passes):
            if number and out["passes"][-1]["seconds"] > args.second_pass_under:
                break
            before, calls, spent = storage_read(), run.calls, run.seconds
            dequant = (weights.bytes, weights.seconds) if args.way != "llama.cpp alone" and weights else None
            started = time.perf_counter()
            if args.way == "llama.cpp alone":
                finite, spread = True, 0.0
                for prompt in ids:
                    logits = run(prompt, layers=[]).logits
                    finite &= bool(np.isfinite(logits).all())
                    spread = max(spread, float(logits[-1].std()))
                checks = {"logits_finite": finite, "last_logits_std": spread}
            else:
                read = read_probes(model, probes)
                tops = [r["top1_prob"] for r in read.rows]
                checks = {"records": len(read.rows), "finite": all(math.isfinite(t) for t in tops),
                          "top1_prob_range": [min(tops), max(tops)],
                          "distinct_top1": len({r["top1_token"] for r in read.rows}),
                          "identity_check": read.identity_check,
                          "final_top1": [p.get("answer_token") for p in read.probes][:1]}
                if args.records:
                    Path(args.records).write_text(json.dumps(read.rows[:200]))
            seconds = time.perf_counter() - started
            found = {"seconds": seconds, "forwards": run.calls - calls, "forward_s": run.seconds - spent,
                     "read": storage_read() - before, "checks": checks}
            if dequant:
                found["file_read_dequant_bytes"] = weights.bytes - dequant[0]
                found["file_read_dequant_s"] = weights.seconds - dequant[1]
            out["passes"].append(found)
            print(json.dumps(found), file=sys.stderr, flush=True)
    memory.running = False
    status = Memory.status()
    out.update(peak=status["VmHWM"], peak_anon=memory.peak["RssAnon"], peak_file=memory.peak["RssFile"])
    return out


def spawn(way: str, args, gguf: Path, prepared: Path, repack: str = "off", timeout: float | None = None) -> dict:
    work = Path(args.work)
    tmp = work / "tmp"
    tmp.mkdir(exist_ok=True)
    command = [sys.executable, __file__, "--child", way, "--gguf", str(gguf), "--prepared", str(prepared),
               "--probes", str(args.probes), "--passes", str(args.passes), "--budget", args.budget,
               "--repack", repack, "--second-pass-under", str(args.second_pass_under)]
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, cwd=work, env=env, timeout=timeout)
    except subprocess.TimeoutExpired as error:  # its output is bytes whatever text= says
        said = error.stderr.decode("utf-8", "replace") if isinstance(error.stderr, bytes) else (error.stderr or "")
        return {"way": way, "failed": f"timed out after {timeout:.0f} s", "stderr": said[-2000:]}
    wall = time.perf_counter() - started
    if done.returncode != 0:
        return {"way": way, "failed": f"exit {done.returncode}", "stderr": done.stderr[-3000:]}
    found = json.loads(done.stdout.strip().splitlines()[-1])
    found["wall_s"] = wall
    found["disk_beyond_gguf"] = folder_bytes(work, skip=gguf)
    return found


# ----------------------------------------------------------------------------- report


def table_row(r: dict) -> str:
    if "failed" in r:
        return f"| {r['way']} | failed: {r['failed']} | | | | | | | | |"
    p = r["passes"]
    n = r["n_layers"]
    first = p[0]
    second = f"{p[1]['seconds']:.1f}" if len(p) > 1 else "—"
    per_forward = first["forward_s"] / max(first["forwards"], 1)
    return (f"| {r['way']} | {r['load_s']:.1f} | {first['seconds']:.1f} | {second} | {first['forwards']} | "
            f"{per_forward:.2f} | {per_forward / n:.3f} | {first['read'] / GB:.1f} | {r['peak'] / GB:.2f} | "
            f"{r['peak_anon'] / GB:.2f} | {r['disk_beyond_gguf'] / GB:.3f} |")


def extrapolate(results: dict, layers: int, rate: float, mac_ssd: float, mac_cores: int) -> list[str]:
    """Scout's 48 layers from this file's measurements, here and on a 64 GB Mac: lines of text.

    Model: a probe set's time is its forward passes plus the lens's work after them (the rest).
    The forward passes scale with the layers (48 / n); the rest with the layers decoded (49 /
    (n + 1)). Of the forward passes, the bytes read from storage at the rate measured here are
    disk time and the remainder is computation (no overlap assumed: an upper bound on the
    computation). On the Mac the disk time is the same bytes at ``mac_ssd`` and the computation
    and the rest scale by 2 / ``mac_cores`` (this machine's 2 cores against the Mac's)."""
    cores_here = os.cpu_count() or 2
    lines = [
        f"Scout: 48 layers; at this file's types (Q4_K, Q6_K head) {file_bytes(SCOUT['layers']) / GB:.1f} GB "
        f"({(file_bytes(layers) - file_bytes(0)) / layers / GB:.3f} GB a layer, {file_bytes(0) / GB:.2f} GB embedding, "
        f"head and norms); the published Q4_K_M (some tensors Q6_K) is about 65 GB: about the Mac's 64 GB, so there, "
        "as here, the weights cannot stay in the page cache and each pass reads them from the SSD again.",
        f"Measured here: {layers} layers, {file_bytes(layers) / GB:.1f} GB, {cores_here} cores, disk {rate / GB:.2f} GB/s. "
        f"Assumed for the Mac (not measured): SSD {mac_ssd:.0f} GB/s, {mac_cores} cores doing the work of {cores_here} "
        f"here {mac_cores / cores_here:.0f} times as fast, no Metal (device: cpu, llama.cpp n_gpu_layers 0, the project's "
        "default), memory as measured here.",
        "",
        "| way | nine probes here (s) | of it forward (s) | read (GB) | 48 layers here (min) | 48 layers read (GB) | "
        "48 layers on the Mac (min) | peak anon RSS (GB) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for way, r in results.items():
        if "failed" in r or not r.get("passes"):
            continue
        p = r["passes"][0]
        n = r["n_layers"]
        forward, rest, read = p["forward_s"], p["seconds"] - p["forward_s"], p["read"]
        scale_f, scale_r = SCOUT["layers"] / n, (SCOUT["layers"] + 1) / (n + 1)
        compute = max(forward - read / rate, 0.0)
        here = forward * scale_f + rest * scale_r
        mac = read * scale_f / (mac_ssd * GB) + (compute * scale_f + rest * scale_r) * cores_here / mac_cores
        lines.append(f"| {way} | {p['seconds']:.0f} | {forward:.0f} | {read / GB:.0f} | {here / 60:.1f} | "
                     f"{read * scale_f / GB:.0f} | {mac / 60:.1f} | {r['peak_anon'] / GB:.1f} |")
    return lines


def report(results: dict, meta: dict, args) -> None:
    """The table and the extrapolation, from the results (also ``--report results.json``)."""
    layers, size, memory, rate = meta["layers"], meta["size"], meta["mem_total"], meta["read_rate"]
    print(f"\nScout-width synthetic GGUF, {layers} layers, {size / GB:.2f} GB (MemTotal {memory / GB:.2f} GB); "
          f"the {meta['probes']} default probes, every layer and position; CPU, {os.cpu_count()} cores; one fresh "
          f"process per row, the file's page cache dropped before each; GB = 1e9 bytes\n")
    print("| way | load s | probes s (pass 1, cold) | pass 2 s | forward passes | s / forward | s / forward / layer | "
          "GB read from storage (pass 1) | peak RSS GB | peak anon RSS GB | disk beyond GGUF GB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results.values():
        print(table_row(r))
    print()
    for r in results.values():
        if "failed" not in r:
            first = r["passes"][0]
            print(f"{r['way']}: load read {r['load_read'] / GB:.1f} GB from storage; after load "
                  f"{json.dumps({k: round(v / GB, 2) for k, v in r['after_load'].items()})}; peak RssFile "
                  f"{r['peak_file'] / GB:.1f} GB; pass 1 checks {json.dumps(first['checks'])}"
                  + (f"; the file read and dequantised: {first['file_read_dequant_bytes'] / GB:.1f} GB in "
                     f"{first['file_read_dequant_s']:.0f} s" if first.get("file_read_dequant_bytes") else ""))
    print()
    for line in extrapolate(results, layers, rate, args.mac_ssd, args.mac_cores):
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="/work/scout-bench", help="folder for the GGUF and preparation (tens of GB)")
    parser.add_argument("--layers", type=int, default=0, help="0: the smallest multiple of 4 over 1.2 x MemTotal")
    parser.add_argument("--probes", type=int, default=9, help="the first N default probes")
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--second-pass-under", type=float, default=900.0, help="a second pass only if the first took less (s)")
    parser.add_argument("--budget", default="8GB", help="placement.max_memory.cpu of the PyTorch way")
    parser.add_argument("--ways", nargs="+", default=list(WAYS))
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per way")
    parser.add_argument("--repack-check", action="store_true", help="also load a 1-layer file with llama.cpp's default (repacking)")
    parser.add_argument("--keep", action="store_true", help="keep the GGUF and the preparation")
    parser.add_argument("--mac-ssd", type=float, default=5.0, help="assumed SSD read rate of the Mac, GB/s")
    parser.add_argument("--mac-cores", type=int, default=10, help="assumed cores of the Mac doing the CPU work")
    parser.add_argument("--report", help="print the table and extrapolation of a saved results.json, run nothing")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    for name in ("gguf", "prepared", "repack", "records"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.way = args.child
        print(json.dumps(child(args)))
        return
    if args.report:
        saved = json.loads(Path(args.report).read_text())
        return report(saved["results"], saved["meta"], args)

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    memory = mem_total()
    layers = args.layers or choose_layers(memory)
    expected = file_bytes(layers)
    print(f"MemTotal {memory / GB:.2f} GB; {layers} layers of Scout's width -> a {expected / GB:.2f} GB GGUF "
          f"({expected / memory:.2f} x the memory); {SCOUT['layers']} layers would be {file_bytes(SCOUT['layers']) / GB:.1f} GB",
          flush=True)
    gguf = work / f"scout-width-{layers}l-q4_k.gguf"
    prepared = work / "prepared"
    try:
        if not gguf.is_file():
            shutil.rmtree(prepared, ignore_errors=True)
            written = write_gguf(gguf, layers)
            print(f"wrote {gguf.name}: {written['bytes'] / GB:.2f} GB in {written['seconds']:.0f} s "
                  f"({written['bytes'] / written['seconds'] / GB:.2f} GB/s); tokenizer: SmolLM2's "
                  f"{written['real_tokens']} tokens padded to {SCOUT['vocab']}", flush=True)
        size = gguf.stat().st_size
        rate = read_rate(gguf)
        print(f"disk read rate: {rate / GB:.2f} GB/s (2 GB from the middle of the file, its cache dropped)", flush=True)
        if args.repack_check:
            repack_check(args, work)
        if not (prepared / "manifest.json").is_file():
            drop_cache(gguf)
            prep = spawn("prepare", args, gguf, prepared, timeout=args.timeout)
            if "failed" in prep:
                raise SystemExit(f"preparation failed: {prep['failed']}\n{prep['stderr']}")
            print(f"prepared (weights: quantised) in {prep['prepare_s']:.1f} s after hashing the file in "
                  f"{prep['hash_s']:.1f} s ({prep['hash_read'] / GB:.1f} GB read); peak RSS {prep['peak'] / GB:.2f} GB; "
                  f"prepared folder {folder_bytes(prepared) / 1e6:.1f} MB", flush=True)
        results = {}
        for way in args.ways:
            drop_cache(gguf)
            print(f"... {way}", file=sys.stderr, flush=True)
            results[way] = spawn(way, args, gguf, prepared, timeout=args.timeout)
            if "failed" in results[way]:
                print(f"{way} failed: {results[way]['failed']}\n{results[way]['stderr']}", file=sys.stderr, flush=True)
            meta = {"layers": layers, "size": size, "mem_total": memory, "read_rate": rate, "probes": args.probes}
            (work / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))  # each way kept
        report(results, meta, args)
    finally:
        if not args.keep:
            gguf.unlink(missing_ok=True)
            gguf.with_suffix(".partial").unlink(missing_ok=True)
            shutil.rmtree(prepared, ignore_errors=True)
            shutil.rmtree(work / "tmp", ignore_errors=True)


def repack_check(args, work: Path) -> None:
    """A one-layer file of the same width loaded (not run: llama.cpp cannot decode a llama4 file
    of fewer than four layers, its attention-temperature input is then never set) by llama.cpp
    with its default parameters and with extra buffer types off: memory after loading."""
    small = work / "repack-check-1l.gguf"
    if not small.is_file():
        write_gguf(small, 1)
    for repack in ("default", "off"):
        code = ("import json, sys; sys.path.insert(0, %r); import scout_width as s, llama_cpp\n"
                "quiet = llama_cpp.llama_log_callback(lambda *a: None); llama_cpp.llama_log_set(quiet, None)\n"
                "llama_cpp.llama_backend_init()\n"
                "p = llama_cpp.llama_model_default_params(); p.use_extra_bufts = %r\n"
                "m = llama_cpp.llama_model_load_from_file(%r, p); assert m\n"
                "print(json.dumps(s.Memory.status()))") % (str(REPO / "bench"), repack == "default", str(small).encode())
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=work,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        status = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else {}
        print(f"llama.cpp load of a 1-layer file ({small.stat().st_size / GB:.2f} GB, {(file_bytes(1) - file_bytes(0)) / GB:.2f} "
              f"GB of it the layer's weights), extra buffer types {repack}: "
              + (", ".join(f"{k} {v / GB:.2f} GB" for k, v in status.items()) if status else f"failed: {done.stderr[-500:]}"),
              flush=True)
    small.unlink()


if __name__ == "__main__":
    main()
