/* llama.cpp's evaluation callback, asking phase in C.

   llama.cpp's scheduler asks its evaluation callback (ggml_backend_sched_eval_callback) about
   every node of the compute graph, in order, whether it is wanted (ask true); a wanted node is
   computed and then handed over (ask false). A model of 30 blocks has about 900 nodes, so a
   callback in Python is entered about 900 times a decode to say "no" to all but the few
   residual-stream tensors the lens reads. This one answers the asking in C, comparing the
   node's name with the names wanted, and enters the Python callback (`handle`) only to hand
   a wanted node over.

   Handing over always returns true, whatever `handle` returns: a false there would make
   llama.cpp skip the rest of the graph split silently. The state is written by Python
   between decodes only (workflow/model/llamacpp.py), never during one. */

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#define GRAPH_FILTER_NAME 64   /* GGML_MAX_NAME */
#define GRAPH_FILTER_NAMES 1024

typedef bool (*graph_filter_handle)(void *tensor, bool ask, void *user_data);

struct graph_filter {
    graph_filter_handle handle;  /* the Python callback */
    int64_t name_offset;         /* offsetof(struct ggml_tensor, name) */
    int32_t every;               /* 1: ask `handle` about every node (listing the graph) */
    int32_t n;                   /* names wanted in this decode */
    char names[GRAPH_FILTER_NAMES][GRAPH_FILTER_NAME];
};

bool graph_filter_eval(void *tensor, bool ask, void *user_data) {
    struct graph_filter *state = (struct graph_filter *)user_data;
    if (!ask) {
        state->handle(tensor, false, user_data);
        return true;
    }
    if (state->every) {
        return state->handle(tensor, true, user_data);
    }
    const char *name = (const char *)tensor + state->name_offset;
    for (int32_t i = 0; i < state->n; i++) {
        if (strncmp(name, state->names[i], GRAPH_FILTER_NAME) == 0) {
            return true;
        }
    }
    return false;
}
