import re

import pytest

from configurator import configure
from conftest import ROOT, run_script

DEFAULTS = {"learning_rate": 1e-4, "max_iters": 100, "compile": True, "out_dir": "out"}


def test_overrides_types_and_files(tmp_path):
    cfg = tmp_path / "c.py"
    cfg.write_text("max_iters = 7\nout_dir = 'x'\n")
    out = configure([str(cfg), "--learning_rate=3e-4", "--compile=False", "--max_iters=9"], DEFAULTS)
    assert out == {"max_iters": 9, "out_dir": "x", "learning_rate": 3e-4, "compile": False}
    assert configure(["--learning_rate=1", "--out_dir=123"], DEFAULTS) == {"learning_rate": 1.0, "out_dir": "123"}


@pytest.mark.parametrize("args, words", [
    (["--learing_rate=1e-3"], ["unknown config key 'learing_rate'", "learning_rate"]),
    (["--max_iters=1.5"], ["'max_iters'", "int", "float"]),
    (["--compile=1"], ["'compile'", "bool"]),
    (["--max_iters"], ["expected --key=value"]),
    (["no_such_file.py"], ["cannot read config file no_such_file.py"]),
])
def test_errors_name_the_key(args, words, capsys):
    with pytest.raises(SystemExit) as e:
        configure(args, DEFAULTS)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err


def test_unknown_key_in_file(tmp_path, capsys):
    cfg = tmp_path / "c.py"
    cfg.write_text("max_iter = 7\n")
    with pytest.raises(SystemExit):
        configure([str(cfg)], DEFAULTS)
    assert "unknown config key 'max_iter'" in capsys.readouterr().err


def test_old_config_keys_load_under_their_new_names(tmp_path):
    old = tmp_path / "old.py"
    old.write_text("head_stride = 4\n")
    assert configure([str(old), "--head_stride=2"], {"head_upsample": 1}) == {"head_upsample": 2}
    assert configure([str(old)], {"head_upsample": 1}) == {"head_upsample": 4}
    assert configure(["--stage1_ckpt=out-stage1"], {"init_from": "scratch"}) == {"init_from": "out-stage1"}


def test_every_config_file_is_read_by_its_script():
    """Each file of config/ holds only keys its trainer knows, of the right types (configure() fails otherwise):
    a renamed or misspelt key in a shipped config is caught here, not on a GPU."""
    import ast

    def defaults(script):
        """The script's top-level constants (the block that config_keys reads), without running it."""
        out = {}
        for node in ast.parse((ROOT / script).read_text()).body:
            if isinstance(node, ast.Assign) and isinstance(node.value, (ast.Constant, ast.Tuple)):
                names = node.targets[0].elts if isinstance(node.targets[0], ast.Tuple) else node.targets
                values = node.value.elts if isinstance(node.value, ast.Tuple) else [node.value]
                out.update({n.id: v.value for n, v in zip(names, values) if isinstance(v, ast.Constant)})
        return out

    scripts = {"generator": "train_generator.py", "stage1": "two_stage/train_stage1.py"}
    for config in sorted((ROOT / "config").glob("*.py")):
        script = next((s for key, s in scripts.items() if key in config.stem), "train_tokenizer.py")
        configure([str(config)], defaults(script))  # exits with the key's name on a mismatch


SCRIPTS = ["train_tokenizer.py", "train_generator.py", "sample.py", "two_stage/train_stage1.py", "aids/refit.py",
           "released/export.py", "studies/reconstruct.py", "studies/classify.py", "studies/fig4.py", "tools/bench.py"]


def test_every_script_prints_its_settings_with_help():
    """--help: how to run it, then each setting line as the top of the file declares it (name = default  # what),
    exit status 0, no work done; fid.py and studies/make_photo_sets.py take argparse's --help."""
    from concurrent.futures import ThreadPoolExecutor

    scripts = {p.relative_to(ROOT).as_posix() for p in ROOT.glob("*/*.py") if p.parent.name in
               ("aids", "released", "two_stage", "studies", "tools") and "if __name__ == \"__main__\"" in p.read_text()}
    scripts |= {p.name for p in ROOT.glob("*.py") if "if __name__ == \"__main__\"" in p.read_text() or
                re.search(r"^(config = )?script_config\(globals\(\)\)", p.read_text(), re.M)}
    assert set(SCRIPTS) | {"fid.py", "studies/make_photo_sets.py"} >= scripts, scripts  # no script left out
    with ThreadPoolExecutor(4) as pool:
        runs = dict(zip(SCRIPTS + ["fid.py"], pool.map(lambda s: run_script(s, "--help"), SCRIPTS + ["fid.py"])))
    for script in SCRIPTS:
        lines = (ROOT / script).read_text().splitlines()
        rules = [i for i, line in enumerate(lines) if line.startswith("# ---")]
        settings = [line for line in lines[rules[0] + 1:rules[1]] if " = " in line]
        assert settings and all(line in runs[script].stdout for line in settings), script
        module = script.removesuffix(".py").replace("/", ".")
        assert (f"python -m {module}" if "/" in script else f"python {script}") in runs[script].stdout
    assert "usage:" in runs["fid.py"].stdout
