"""The names of experiment 001's files, as its rules (rules/exp001.smk) declare them."""


def heatmap_file(model: str, probe: str, lens: str) -> str:
    """Experiment 001's heatmap of one probe through one lens: heatmap-{probe}.png the logit
    lens's, tuned-heatmap-{probe}.png the tuned lens's."""
    prefix = "" if lens == "logit" else f"{lens}-"
    return f"results/001/plots/{model}/{prefix}heatmap-{probe}.png"
