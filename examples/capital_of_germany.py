# %% [markdown]
# # Where does the answer to "The capital of Germany is" emerge, and how do two models differ?
#
# The two embedded models (SmolLM2-135M-Instruct, 30 layers, and Gemma 3 270M, 18 layers) read
# through the logit lens and the tuned lens at every layer, with the pipeline's own code
# (`workflow/api.py`): the same numbers as `results/001/`. Run it from the repository with the
# project's environment (`make setup`), as a notebook (`examples/capital-of-germany.ipynb`) or
# as a script (`.venv/bin/python examples/capital_of_germany.py`).
#
# The first run prepares each model from its GGUF file (under a minute each) and trains its
# tuned lens (one to two minutes) unless the pipeline has already done so (`make demo`).

# %%
from workflow import api

PROMPT, ANSWER = "The capital of Germany is", " Berlin"
models = {key: api.load(key) for key in ("smollm2-135m-instruct", "gemma-3-270m")}
records = {key: model.lens(PROMPT, ANSWER) for key, model in models.items()}
records["gemma-3-270m"].head()

# %% [markdown]
# One row per lens, layer (0 is the embedding) and prompt position: the lens's top-1 token and
# its probability, the top-k, the entropy, the answer's probability and rank, and the KL to
# the model's own output. Where does " Berlin" first become the top-1 at the last position,
# and from which layer does it stay there?

# %%
def emergence(frame, answer=ANSWER):
    """Per lens: (first layer where the answer is top-1, layer from which it stays top-1)."""
    last = frame[frame["position"] == frame["position"].max()]
    found = {}
    for lens, rows in last.groupby("lens"):
        top = rows.sort_values("layer")["top1_token"].eq(answer).tolist()
        first = top.index(True) if True in top else None
        stable = next((layer for layer in range(len(top)) if all(top[layer:])), None)
        found[lens] = (first, stable)
    return found


layers = {key: emergence(frame) for key, frame in records.items()}
for key, found in layers.items():
    n_layers = models[key].n_layers
    for lens, (first, stable) in found.items():
        print(f"{key:24} {lens:6} lens: first top-1 at layer {first} of {n_layers}, stays from layer {stable}")

# %% [markdown]
# The answer's probability across relative depth: the tuned lens, trained to predict the
# model's output from each layer, sees the answer several layers before the logit lens.

# %%
figures = {"answer-by-layer": api.plot_answer_by_layer(records)}
figures["answer-by-layer"]

# %% [markdown]
# The whole grid of one model: the top-1 token at every layer and position.

# %%
figures["gemma-heatmap-tuned"] = api.plot_heatmap(records["gemma-3-270m"], lens="tuned")
figures["gemma-heatmap-tuned"]

# %% [markdown]
# What does Gemma predict at the last position in the middle of the stack, before " Berlin"?

# %%
gemma = records["gemma-3-270m"]
middle = gemma[(gemma["lens"] == "tuned") & (gemma["position"] == gemma["position"].max())]
middle[["layer", "top1_token", "top1_prob", "answer_prob", "answer_rank"]].iloc[6:14]

# %% [markdown]
# Where is the answer caused? Activation patching (experiment 002): the residual of the clean
# prompt at one layer and position put into the run on "The capital of France is"; the
# fraction of the logit difference (" Berlin" over " Paris") it restores.

# %%
patched = models["gemma-3-270m"].patch(PROMPT, ANSWER, "The capital of France is", " Paris")
figures["gemma-patching"] = api.plot_patching(patched)
figures["gemma-patching"]

# %% [markdown]
# The same records in the interactive explorer: hover a layer and position for its top-k
# tokens, switch between the lenses, follow " Berlin" by layer at any position.

# %%
import sys

page = api.explore(records["gemma-3-270m"], "capital-of-germany-explorer.html")
if "ipykernel" in sys.modules:
    from IPython.display import IFrame, display

    display(IFrame(str(page), width="100%", height=900))
else:
    print(f"wrote {page}: open it in a browser")

# %% [markdown]
# Run as a script (not in a notebook), the figures go to PNG files in the current folder.

# %%
if "ipykernel" not in sys.modules:
    for name, figure in figures.items():
        figure.savefig(f"{name}.png", dpi=110)
        print(f"wrote {name}.png")
