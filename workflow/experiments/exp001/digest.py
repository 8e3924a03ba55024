"""Experiment 001's digests: compact text of a model's outputs, sized to fit an LLM's prompt.

Per probe, at the last position: for each layer the top tokens with their
probabilities, the entropy, the answer's rank and probability, and KL to the
final distribution; plus the model's metadata. When the digest exceeds
``max_chars``, layers are thinned evenly (layer 0 and the last layer always
stay) until it fits, and the digest says so.

Figures are written to two or three significant digits, and what is float noise by
nature (the lens-vs-model difference at the last layer, the rank of an improbable
answer among thousands of near-ties) only to its order of magnitude, so that the
rounding of another processor cannot change a prompt (and so its cached response).
"""

from __future__ import annotations

from workflow.evaluation.text import fitted, magnitude_text, rank_text, source_text
from workflow.experiments.exp001.analysis import ModelFacts, ProbeFacts, calibration_fit

DEFAULT_MAX_CHARS = 24_000
TOP_TOKENS = 3
# Probes shown one by one in a digest (and in the offline analyst's per-probe tables); the
# statistics cover them all.
DETAIL_PROBES = 12


def statistics_lines(facts: ModelFacts) -> list[str]:
    """The probe set's statistics (``analysis.probe_statistics``) as sentences, for the
    digest and the offline analyst alike."""
    st = facts.statistics
    lines = [
        f"accuracy (final top-1 = the answer's first token): {st['accuracy'].text(percent=True)}, n = {st['n']}",
    ]
    if st["multi_token_answers"]:
        lines.append(
            f"{st['multi_token_answers']} answers have several tokens; whole-answer accuracy (greedy decoding gives the "
            f"whole answer): {st['whole_answer_accuracy'].text(percent=True)}"
        )
    for lens, depth in st["depth"].items():
        lines.append(
            f"{lens} lens, relative depth where the answer first becomes top-1: "
            + (depth.text() if depth else "the answer never becomes top-1")
        )
    if len(st["relations"]) > 1:
        for name, rel in st["relations"].items():
            lines.append(
                f"relation {name}: accuracy {rel['accuracy'].text(percent=True)}, n = {rel['n']}; first top-1 depth "
                + (rel["depth"].text() if rel["depth"] else "never")
            )
    directions = st.get("directions")
    if directions:
        lines.append(
            f"forward against reverse on {directions['pairs']} facts stated both ways: accuracy "
            f"{directions['forward_accuracy'].text(percent=True)} forward, {directions['reverse_accuracy'].text(percent=True)} "
            f"reverse; paired difference (forward - reverse) {directions['difference'].text()}; mean difference of "
            f"the whole answer's log-probability {directions['logprob_difference'].text()} nats"
        )
    calibration = st.get("calibration")
    if calibration:
        lines.append(
            f"calibration of the final top-1 probability: expected calibration error {calibration['ece']:.3f} at "
            f"temperature 1; lowest (at temperature) {_fitted(facts, calibration['ece_at_temperature'], calibration['temperature'], st['accuracy'].estimate)} "
            f"(n = {calibration['n']}, {len(calibration['bins'])} non-empty bins of 10)"
        )
    if facts.tuned_temperature:
        n = len(facts.tuned_temperature) - 1
        shown = sorted({0, n // 4, n // 2, 3 * n // 4, n})
        accuracy = facts.tuned_accuracy or [float("nan")] * (n + 1)
        cells = [
            f"layer {layer} {e1:.3f} -> {_fitted(facts, best, t, accuracy[layer])}"
            for layer, e1, t, best in (facts.tuned_temperature[i] for i in shown)
        ]
        lines.append(
            "tuned lens, temperature scaling by layer (calibration error at temperature 1 -> lowest, at temperature): "
            + "; ".join(cells)
            + (f" ({DEGENERATE})" if any("degenerate" in c for c in cells) else "")
        )
    for lens, values in facts.layer_ece.items():
        best = min(range(len(values)), key=lambda i: (values[i], i))
        lines.append(
            f"{lens} lens, calibration error of the top-1 probability by layer: layer 0 {values[0]:.3f}, "
            f"lowest {values[best]:.3f} at layer {best}, last layer {values[-1]:.3f}"
        )
    return lines


DEGENERATE = (
    "degenerate: accuracy 0% or 100% at that layer, so the error falls only as the temperature reaches an end of the grid "
    "and pushes every probability towards the accuracy; no calibration is found there"
)


def _fitted(facts: ModelFacts, error: float, temperature: float, accuracy: float) -> str:
    """The lowest calibration error and its temperature, said as what it is (analysis.calibration_fit)."""
    fit = calibration_fit(facts.temperatures, temperature, accuracy)
    if fit == "degenerate":
        return f"degenerate (accuracy {100 * accuracy:.0f}%; {error:.3f} only at the grid's bound {temperature:g})"
    return f"{error:.3f} at {temperature:g}" + (" (the grid's bound: the best may lie beyond it)" if fit == "bound" else "")


def _layer_line(step: dict) -> str:
    tops = ", ".join(f"{tok!r} {prob:.3f}" for tok, prob in step["topk"][:TOP_TOKENS])
    return (
        f"{step['layer']:>3} | {tops} | {step['entropy']:.2f} | {rank_text(step['answer_rank'])} | "
        f"{step['answer_prob']:.3g} | {step['kl_to_final']:.2f}"
    )


def _probe_block(probe: ProbeFacts, n_layers: int, stride: int) -> str:
    head = (
        f"### probe {probe.id} ({probe.style})\n"
        f"prompt {probe.prompt!r} -> expected {probe.answer!r}; {probe.n_tokens} tokens\n"
        f"final top-1 {probe.final_top1!r} ({probe.final_top1_prob:.3f}); answer probability "
        f"{probe.final_answer_prob:.3g}, rank {rank_text(probe.final_answer_rank)}; answer first top-1 at layer "
        f"{probe.first_top1_layer}, stays top-1 from layer {probe.stable_top1_layer}"
    )
    for lens, (first, stable) in probe.lens_layers.items():
        head += f"\n{lens} lens: answer first top-1 at layer {first}, stays top-1 from layer {stable} (the table below is the logit lens)"
    if probe.reverse_of:
        head += f"\nreverse of probe {probe.reverse_of}"
    for warning in probe.warnings:
        head += f"\nwarning: {warning}"
    layers = [s for s in probe.trajectory if s["layer"] % stride == 0 or s["layer"] == n_layers]
    table = "layer | top tokens (prob) | entropy (nats) | answer rank | answer prob | KL to final (nats)"
    return head + "\n" + table + "\n" + "\n".join(_layer_line(s) for s in layers)


def model_digest(facts: ModelFacts, max_chars: int = DEFAULT_MAX_CHARS) -> str:
    """The digest of one model, no longer than ``max_chars`` where thinning allows."""
    header = (
        f"## model {facts.model}\n"
        f"{facts.architecture}, {facts.n_layers} layers, d_model {facts.d_model}, vocabulary "
        f"{facts.vocab_size}, {facts.dtype} on {facts.device}; source {source_text(facts.source)}\n"
        f"lens settings {facts.lens}; largest lens-vs-model probability difference at the last layer "
        f"{magnitude_text(facts.identity_max_prob_diff)}\n"
        f"answer is the final top-1 on {facts.n_correct} of {len(facts.probes)} probes\n"
        + "statistics of the probe set:\n"
        + "".join(f"- {line}\n" for line in statistics_lines(facts))
        + "share of rows whose top-1 repeats the input token, by band (early/middle/late): "
        + ", ".join(f"{facts.copy_rate[b]:.2f}" for b in ("early", "middle", "late"))
        + "\nmost frequent middle-layer top-1 tokens at the last position: "
        + ", ".join(f"{tok!r} x{n}" for tok, n in facts.middle_tokens)
    )
    shown = facts.probes[:DETAIL_PROBES]
    if len(facts.probes) > len(shown):
        header += f"\nprobe by probe below: the first {len(shown)} of {len(facts.probes)} probes (the statistics above cover all)"
    return fitted(header, lambda stride: [_probe_block(p, facts.n_layers, stride) for p in shown], facts.n_layers, max_chars)
