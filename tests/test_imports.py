"""How the repository's modules import each other: one direction only (no import circle, function-local imports
included; ast, no module is run), the paper's model alone, and what a run loads: each script only what it uses
(a run in a subprocess, its modules listed after it ends)."""
import ast
import json
import subprocess
import sys

from checkpoints import load_tokenizer
from conftest import ROOT
from model import TiTok

# every module of the repository by its import name: model, two_stage.titok, ...
MODULES = {".".join(p.relative_to(ROOT).with_suffix("").parts): p for p in ROOT.rglob("*.py")
           if p.relative_to(ROOT).parts[0] not in ("tests", "config", ".venv") and p.name != "__init__.py"}


def imports(path, unconditional=False):
    """The repository modules that `path` imports, anywhere in it (unconditional: in its module body only, the
    imports that run whenever it is loaded)."""
    found = set()
    tree = ast.parse(path.read_text())
    for node in tree.body if unconditional else ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return found & set(MODULES)


def at_root(name):
    return "." not in name


def test_no_import_circle():
    """One direction: the folders build on the root's modules. A root module reaches into a folder (an optional
    piece: released weights, the two-stage model, an aid) only inside the branch that needs it, never when it is
    loaded; without those edges, no circle."""
    for name, path in MODULES.items():
        if at_root(name):
            assert all(at_root(m) for m in imports(path, unconditional=True)), name
    graph = {name: {m for m in imports(path) if not (at_root(name) and not at_root(m))} for name, path in MODULES.items()}
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
    assert "checkpoints" in graph["train_tokenizer"] and "model" in graph["checkpoints"]  # loading: one direction


def test_the_root_shows_the_core():
    """At most 12 modules at the root: the core of the design and what it imports; the rest in folders."""
    root = sorted(p.name for p in ROOT.glob("*.py"))
    assert len(root) <= 12, root
    core = {"model.py", "quantizer.py", "generator.py", "train_tokenizer.py", "train_generator.py", "sample.py", "fid.py"}
    assert core <= set(root)
    graph = {name: imports(path) for name, path in MODULES.items()}
    reached, todo = set(), [p.removesuffix(".py") for p in core]
    while todo:  # what the core imports, transitively
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo += graph[name]
    assert {p.removesuffix(".py") for p in root} <= reached  # nothing at the root that the core does not import


LOADED = """
import json, runpy, sys
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
print("LOADED " + json.dumps(sorted(m for m in sys.modules)))
"""


def loaded(tmp_path, script, *args):
    """The repository modules a run of `script` (a root script, run to its end) has loaded."""
    p = subprocess.run([sys.executable, "-c", LOADED, script, *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert p.returncode == 0, p.stdout + p.stderr
    modules = json.loads(p.stdout.split("LOADED ")[-1])
    return {m for m in modules if m in MODULES or m.split(".")[0] in {"aids", "released", "two_stage", "nets", "studies",
                                                                       "tools"}}


def test_each_script_loads_what_it_uses(tmp_path):
    """The demo's three commands, a few steps each: the tokenizer is the paper's model.TiTok itself; the
    released-weight conversion, the two-stage recipe, the perceptual networks and the photo recipe's pixel head are
    not loaded; the tokenizer's run loads no generator, sampling no dataset and no loss."""
    tok, gen = tmp_path / "tok", tmp_path / "gen"
    few = ["--max_iters=2", "--eval_interval=2", "--num_train=64", "--eval_batches=1"]
    runs = {"train_tokenizer": loaded(tmp_path, "train_tokenizer.py", "config/shapes_tokenizer.py", *few, f"--out_dir={tok}"),
            "train_generator": loaded(tmp_path, "train_generator.py", "config/shapes_generator.py", *few,
                                      f"--tokenizer={tok}", f"--out_dir={gen}"),
            "sample": loaded(tmp_path, "sample.py", f"--generator={gen}", "--samples_per_class=1", f"--out={tmp_path}/s")}
    assert type(load_tokenizer(tok)) is TiTok  # not a subclass: the model README's reading order describes
    never = {"released", "two_stage", "nets", "studies", "tools", "aids.pixel_grid"}
    for name, modules in runs.items():
        assert not {m for m in modules if m in never or m.split(".")[0] in never}, (name, sorted(modules))
    assert "generator" not in runs["train_tokenizer"] and "aids.routing" in runs["train_tokenizer"]
    assert {"losses", "aids.routing"}.isdisjoint(runs["train_generator"]) and "aids.codebook_init" in runs["train_generator"]
    assert {"data", "losses", "aids.routing", "aids.codebook_init"}.isdisjoint(runs["sample"])
