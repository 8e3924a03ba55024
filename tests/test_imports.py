"""Imports point one way: no module of ``workflow`` reaches itself again through the modules
it imports, including imports inside functions (a cycle held together by a late import is
still one idea split in two). Read from the source, as the code versions read it."""

import ast

from workflow import codeversion

WORKFLOW = codeversion.REPO / "workflow"


def import_graph() -> dict[str, set[str]]:
    """Each workflow module and the workflow modules it imports anywhere (packages' own
    ``__init__`` left out: importing ``workflow.native.build`` runs ``workflow/native/__init__.py``,
    which imports nothing, and is no arrow back)."""
    graph = {}
    for path in sorted(WORKFLOW.rglob("*.py")):
        name = ".".join(path.relative_to(codeversion.REPO).with_suffix("").parts).removesuffix(".__init__")
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {m for m in codeversion._imports(path, tree) if codeversion._module_file(m) is not None}
        graph[name] = {m for m in imported if m != name and codeversion._module_file(m).name != "__init__.py"}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected set of more than one module (Tarjan), sorted."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_the_guard_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_of_workflow_imports_itself_through_others():
    graph = import_graph()
    assert len(graph) > 40 and "workflow.native.lens_block" in graph
    assert cycles(graph) == []
