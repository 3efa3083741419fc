"""The project's modules import each other in one direction only: no import circle, function-local imports
included (ast, no module is run)."""
import ast

from conftest import ROOT

MODULES = {p.stem: p for p in ROOT.glob("*.py")}


def imports(path):
    """The project modules that `path` imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & set(MODULES)


def test_no_import_circle():
    graph = {name: imports(path) for name, path in MODULES.items()}
    done, path = set(), []

    def visit(name):
        assert name not in path, "import circle: " + " -> ".join(path[path.index(name):] + [name])
        if name in done:
            return
        path.append(name)
        for other in sorted(graph[name]):
            visit(other)
        path.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)
    assert graph["model"] <= {"quantizer"}  # the paper's model reads alone
    assert "pretrained" in graph["train_tokenizer"] and "model" in graph["pretrained"]  # loading: one direction
