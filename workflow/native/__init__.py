"""The project's C kernels, each with its own loader: ``lens_block`` (the streamed lens's
fused sweep, ``lens_block.c``), ``dequant`` (GGUF blocks to float32, ``dequant.c``) and
``graph_filter`` (llama.cpp's evaluation callback answering its asking, ``graph_filter.c``);
``build`` compiles a source once per compiler and processor. A job's code version holds a
kernel's C source exactly when its code imports that kernel's loader
(``workflow.provenance.codeversion``)."""
