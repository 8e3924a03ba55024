"""Imports point one way: no module of ``workflow`` reaches itself again through the modules
it imports, including imports inside functions (a cycle held together by a late import is
still one idea split in two). Read from the source, as the code versions read it.

An import of a ``workflow`` module inside a function (or a class) says on its line why it is
not at the top (``# torch: not at planning time``): a late import that is not needed is a
dependency the reader of the module's head does not see."""

import ast
import io
import re
import tokenize

from workflow.provenance import codeversion

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


# A comment that only speaks to a tool is no reason.
TOOL_COMMENT = re.compile(r"#\s*(noqa|type:|pragma|fmt:)")


def late_imports(path, text: str) -> list[tuple[int, str, str, str]]:
    """Each import of a ``workflow`` module inside a function or class body of the module
    ``path`` (relative imports resolved as ``path``'s): (line, enclosing function or class,
    module as written, the reason in a comment on one of the statement's lines, or "")."""
    comments: dict[int, list[str]] = {}
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == tokenize.COMMENT and not TOOL_COMMENT.match(token.string):
            comments.setdefault(token.start[0], []).append(token.string)
    found = []

    def visit(node: ast.AST, scope: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)) and scope:
                if "workflow" in codeversion._imports(path, ast.Module(body=[child], type_ignores=[])):
                    written = ", ".join(a.name for a in child.names) if isinstance(child, ast.Import) \
                        else "." * child.level + (child.module or "")
                    reason = " ".join(c for line in range(child.lineno, child.end_lineno + 1) for c in comments.get(line, ()))
                    found.append((child.lineno, scope, written, reason))
            inner = scope
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                inner = f"{scope}.{child.name}" if scope else child.name
            elif isinstance(child, ast.Lambda):
                inner = f"{scope}.<lambda>" if scope else "<lambda>"
            visit(child, inner)

    visit(ast.parse(text), "")
    return found


def test_the_guard_finds_a_late_import_without_a_reason():
    text = (
        "from workflow.base.errors import UserError\n"
        "import os\n\n\n"
        "def f():\n"
        "    import json\n"
        "    from workflow.model.load import load_model\n"
        "    from workflow.report.plots import plt  # matplotlib: only when plotting\n"
        "    from . import atomic  # noqa: F401\n"
        "    import workflow.gguf.file\n"
        "    from workflow.gguf.prepare import (  # torch: not at planning time\n"
        "        MANIFEST,\n"
        "    )\n"
        "    return lambda: __import__('os')\n\n\n"
        "class C:\n"
        "    def g(self):\n"
        "        from workflow import native\n"
    )
    found = late_imports(codeversion.REPO / "workflow" / "example.py", text)
    assert [(line, scope, module) for line, scope, module, reason in found if not reason] == [
        (7, "f", "workflow.model.load"), (9, "f", "."), (10, "f", "workflow.gguf.file"), (19, "C.g", "workflow")]
    assert [(line, reason) for line, _, _, reason in found if reason] == [
        (8, "# matplotlib: only when plotting"), (11, "# torch: not at planning time")]


def test_every_late_import_of_a_workflow_module_says_why():
    unexplained = []
    for path in sorted(WORKFLOW.rglob("*.py")):
        name = path.relative_to(codeversion.REPO).as_posix()
        for line, scope, module, reason in late_imports(path, path.read_text(encoding="utf-8")):
            if not reason:
                unexplained.append(f"{name}:{line} ({scope}) imports {module} without a comment saying why it is late")
    assert unexplained == []


# The packages of workflow/, lowest first: a module imports only from its own package or a
# lower one (docs/development.md draws them). The API and lens-chat (modules of workflow/
# itself) stand on all of them. An experiment imports no other experiment: what two share
# lives below both.
LAYERS = ("base", "native", "provenance", "config", "gguf", "model", "lens", "evaluation", "report", "experiments")
TOP = len(LAYERS)


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else TOP


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Each import from a lower package to a higher one, and from one experiment to another."""
    found = []
    for module, imported in sorted(graph.items()):
        for other in sorted(imported):
            if layer(other) > layer(module):
                found.append(f"{module} -> {other}")
            elif module.startswith("workflow.experiments.") and other.startswith("workflow.experiments.") \
                    and module.split(".")[2] != other.split(".")[2]:
                found.append(f"{module} -> {other} (another experiment)")
    return found


def test_the_guard_finds_an_import_from_a_lower_package_to_a_higher_one():
    graph = {
        "workflow.base.errors": set(),
        "workflow.gguf.file": {"workflow.base.errors", "workflow.lens.run"},
        "workflow.experiments.exp004.run": {"workflow.experiments.exp002.run", "workflow.lens.run"},
        "workflow.api": {"workflow.experiments.exp004.run"},
    }
    assert upward_imports(graph) == [
        "workflow.experiments.exp004.run -> workflow.experiments.exp002.run (another experiment)",
        "workflow.gguf.file -> workflow.lens.run",
    ]


def test_every_module_lives_in_a_package_of_the_layers_and_imports_only_downward():
    graph = import_graph()
    packages = {m.split(".")[1] for m in graph if m.count(".") >= 2}
    assert packages == set(LAYERS), "a package of workflow/ not in LAYERS: place it (and in docs/development.md)"
    assert {m for m in graph if layer(m) == TOP} == {"workflow", "workflow.api", "workflow.chat"}
    assert upward_imports(graph) == []


MAX_PARAMETERS = 6
WHY_MORE = "# more than 6 parameters: "


def long_signatures(path, text: str) -> list[str]:
    """Each function of ``text`` taking more than MAX_PARAMETERS (``self``/``cls`` not
    counted) without a line ``# more than 6 parameters: <why>`` right above it (or above its
    decorators): what travels together goes in one object (``ModelSpec``, ``LensSettings``,
    ``Outputs``), and what does not says why."""
    lines = text.splitlines()
    found = []
    for node in ast.walk(ast.parse(text)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        a = node.args
        count = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) + bool(a.vararg) + bool(a.kwarg)
        if a.args and a.args[0].arg in ("self", "cls"):
            count -= 1
        first = min([node.lineno] + [d.lineno for d in node.decorator_list])
        above = lines[first - 2].strip() if first >= 2 else ""
        if count > MAX_PARAMETERS and not (above.startswith(WHY_MORE) and len(above) > len(WHY_MORE) + 10):
            found.append(f"{path}:{node.lineno} {node.name} takes {count} parameters")
    return found


def test_the_guard_finds_a_long_signature_without_a_reason():
    text = (
        "def short(a, b, c, d, e, f):\n    pass\n\n\n"
        "def long(a, b, c, d, e, f, g):\n    pass\n\n\n"
        "# more than 6 parameters: the kernel's arguments, as its C signature has them\n"
        "def said(a, b, c, d, e, f, g):\n    pass\n\n\n"
        "class C:\n"
        "    def method(self, a, b, c, d, e, f):\n        pass\n\n"
        "    # more than 6 parameters: \n"
        "    @staticmethod\n"
        "    def empty_reason(a, b, c, d, e, f, *rest):\n        pass\n"
    )
    assert long_signatures("x.py", text) == ["x.py:5 long takes 7 parameters", "x.py:20 empty_reason takes 7 parameters"]


def test_no_function_takes_more_than_six_parameters_without_saying_why():
    found = []
    for path in sorted(WORKFLOW.rglob("*.py")):
        found += long_signatures(path.relative_to(codeversion.REPO).as_posix(), path.read_text(encoding="utf-8"))
    assert found == []
