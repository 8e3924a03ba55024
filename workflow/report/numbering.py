"""How layers and blocks are counted, in one place for every figure, page and document
(docs/data-contract.md, "Layers and blocks").

A layer is a point of the residual stream, 0 to L: 0 the embeddings (the input of block 0),
n the output of block n-1, L the model's output. A block is one of the model's L transformer
blocks, 0 to L-1: block n reads layer n and writes layer n+1. Experiments 001 to 003 count
layers; experiment 004 counts blocks (its records' ``layer`` column is the block).
"""

LAYER_LABEL = "layer (0 = embeddings; layer n = output of block n−1)"
BLOCK_LABEL = "block (block n writes layer n+1)"
DEPTH_LABEL = "relative depth (layer / layers)"
