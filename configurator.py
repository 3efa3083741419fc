"""
nanoGPT's configurator, made strict. A training script keeps its hyperparameters as top-of-file
constants and then calls

    config = script_config(globals())

Arguments are config files (python files of assignments, e.g. config/shapes_tokenizer.py) and
--key=value overrides, applied left to right. Every key must be one of the script's constants and
every value must have the constant's type (an int is accepted where a float is expected); anything
else exits with a message that names the key. Then each script checks the values themselves with
check() and fail(): every bad input is one line on stderr, `error: <what>, <why>, <what to do>`, and
exit status 2, before any work starts. `--help` prints the settings as the top of the script declares them.
"""
import math
import os
import sys
from ast import literal_eval

RENAMED = {"head_stride": "head_upsample", "stage1_ckpt": "init_from"}  # old config keys, read under their new names
MOVED = {"refit_epochs": "the codebook refit is its own step now: python -m aids.refit --tokenizer=<out_dir>",
         "refit_steps": "the codebook refit is its own step now: python -m aids.refit --tokenizer=<out_dir>"}
RULES = {"> 0": lambda v: v > 0, ">= 0": lambda v: v >= 0, "in [0, 1]": lambda v: 0 <= v <= 1,
         "in [0, 1)": lambda v: 0 <= v < 1}


def fail(msg):
    """A bad input: one line on stderr (a message's first line: its summary) and exit status 2 (as for a bad
    command line), no traceback. Under torchrun every process fails alike, and the first of each machine says why."""
    if os.environ.get("LOCAL_RANK", "0") == "0":
        print(f"error: {msg.splitlines()[0]}", file=sys.stderr)
    sys.exit(2)


def check(values, rule, keys):
    """Fail on the first of `keys` whose value breaks `rule`: one of RULES (finite numbers only), or a
    tuple of the allowed values. None (a script's 'not set') passes."""
    for key in keys:
        v = values[key]
        if v is None:
            continue
        if isinstance(rule, tuple):
            if v not in rule:
                fail(f"{key} must be one of {', '.join(map(repr, rule))}, not {v!r}; set --{key} to one of them")
        elif not (type(v) in (int, float) and math.isfinite(v) and RULES[rule](v)):
            fail(f"{key} must be a number {rule}, not {v!r}; set --{key} to such a value")


def _check_type(key, value, defaults, source):
    if key in MOVED and key not in defaults:
        fail(f"config key '{key}' in {source} is gone: {MOVED[key]}")
    if key not in defaults:
        close = [k for k in defaults if k.split("_")[0] == key.split("_")[0] or key in k]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        fail(f"unknown config key '{key}' in {source}{hint}; the keys are: {', '.join(sorted(defaults))}")
    default = defaults[key]
    if default is None or type(value) is type(default):
        return value
    if type(default) is float and type(value) is int:
        return float(value)
    fail(f"config key '{key}' in {source} must be {type(default).__name__} "
          f"(default {default!r}), got {type(value).__name__} {value!r}")


def script_config(namespace):
    """A script's settings (its int, float, bool, str, list and None globals, constants in capitals aside) overridden by the
    command line's config files and --key=value (configure), in `namespace` itself, the script's globals();
    -> {key: value} of them all. --help (or -h): help_text, exit status 0."""
    keys = [k for k, v in namespace.items()
            if not k.startswith("_") and not k.isupper() and (v is None or isinstance(v, (int, float, bool, str, list)))]
    if {"--help", "-h"} & set(sys.argv[1:]):
        print(help_text(namespace))
        sys.exit(0)
    namespace.update(configure(sys.argv[1:], {k: namespace[k] for k in keys}))
    return {k: namespace[k] for k in keys}


def help_text(namespace):
    """How to run the script (its docstring), then its settings as the top of its file declares them: the lines
    between its first two `# ---` rules, each `name = default  # what it is`."""
    lines = open(namespace["__file__"]).read().splitlines()
    rules = [i for i, line in enumerate(lines) if line.startswith("# ---")] + [len(lines)]
    spec = namespace.get("__spec__")
    run = f"python -m {spec.name}" if spec is not None and spec.name != "__main__" else f"python {os.path.relpath(namespace['__file__'])}"
    settings = "\n".join(lines[rules[0] + 1:rules[1]])
    return (f"{(namespace.get('__doc__') or '').strip()}\n\nsettings ({run} [config file ...] [--key=value ...]; a config "
            f"file assigns some of them, --key=value one, applied left to right):\n{settings}")


def configure(args, defaults):
    """Return {key: value} of the overrides in `args`, checked against `defaults`."""
    out = {}
    for arg in args:
        if not arg.startswith("--"):
            try:
                src = open(arg).read()
            except OSError as e:
                fail(f"cannot read config file {arg}: {e}")
            if os.environ.get("RANK", "0") == "0":  # under torchrun, one line, not one per process
                print(f"overriding config with {arg}")
            scope = {}
            exec(src, {}, scope)
            for key, value in scope.items():
                if not key.startswith("_") and not callable(value) and type(value).__name__ != "module":
                    key = RENAMED.get(key, key) if key not in defaults else key
                    out[key] = _check_type(key, value, defaults, arg)
        else:
            if "=" not in arg:
                fail(f"expected --key=value, got {arg!r}")
            key, text = arg[2:].split("=", 1)
            key = RENAMED.get(key, key) if key not in defaults else key
            try:
                value = literal_eval(text)
            except (SyntaxError, ValueError):
                value = text  # a bare string, e.g. --out_dir=out-shapes
            if type(defaults.get(key)) is str:
                value = text  # a string stays a string even if it looks like a number: --dataset=123
            out[key] = _check_type(key, value, defaults, f"--{key}")
    return out
