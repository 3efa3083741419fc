import pytest

from configurator import configure

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
