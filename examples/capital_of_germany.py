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
columns = ["lens", "layer", "position", "input_token", "top1_token", "top1_prob", "answer_prob", "answer_rank"]
records["gemma-3-270m"][columns].head().round(3)

# %% [markdown]
# One row per lens, layer (0 is the embedding) and prompt position: the lens's top-1 token and
# its probability, the answer's probability and rank (the columns above), and the top-k, the
# entropy and the KL to the model's own output. Where does " Berlin" first become the top-1 at
# the last position, and from which layer does it stay there?

# %%
print(api.describe_emergence(records))

# %% [markdown]
# The answer's probability at the last position across relative depth (layer / layers), both
# models, the logit lens solid and the tuned lens dashed: where each line rises is where that
# lens reads the answer.

# %%
figures = {"answer-by-layer": api.plot_answer_by_layer(records)}
figures["answer-by-layer"]

# %% [markdown]
# The whole grid of one model through the tuned lens: the top-1 token at every layer and
# position, coloured by its probability.

# %%
figures["gemma-heatmap-tuned"] = api.plot_heatmap(records["gemma-3-270m"], lens="tuned")
figures["gemma-heatmap-tuned"]

# %% [markdown]
# What do Gemma's last layers do to " Berlin"? Its top-1 token, the answer's probability and
# its rank at the last position, from layer 12 on, through both lenses.

# %%
gemma = records["gemma-3-270m"]
last = gemma[(gemma["position"] == gemma["position"].max()) & (gemma["layer"] >= 12)]
last[["lens", "layer", "top1_token", "top1_prob", "answer_prob", "answer_rank"]].round(3)

# %% [markdown]
# Where is the answer caused? Activation patching (experiment 002): the residual of the clean
# prompt at one layer and position put into the run on "The capital of France is"; the
# fraction of the logit difference (" Berlin" over " Paris") it restores.

# %%
patched = models["gemma-3-270m"].patch(PROMPT, ANSWER, "The capital of France is", " Paris")
figures["gemma-patching"] = api.plot_patching(patched)
figures["gemma-patching"]

# %% [markdown]
# The same records in the interactive explorer, a page this cell writes
# (capital-of-germany-explorer.html, shown here in a running notebook): hover a layer and
# position for its top-k tokens, switch between the lenses, follow " Berlin" by layer at any
# position.

# %%
import sys

page = api.explore(records["gemma-3-270m"], "capital-of-germany-explorer.html")
if "ipykernel" in sys.modules:
    from IPython.display import HTML, display

    display(HTML(f'<iframe src="{page}" width="100%" height="900"></iframe>'))
else:
    print(f"wrote {page}: open it in a browser")

# %% [markdown]
# Run as a script (not in a notebook), the figures go to PNG files in the current folder.

# %%
if "ipykernel" not in sys.modules:
    for name, figure in figures.items():
        figure.savefig(f"{name}.png", dpi=110)
        print(f"wrote {name}.png")
