"""
nanoGPT's configurator, made strict. A training script keeps its hyperparameters as top-of-file
constants and then calls

    config = script_config(globals())

Arguments are config files (python files of assignments, e.g. config/shapes_tokenizer.py) and
--key=value overrides, applied left to right. Every key must be one of the script's constants and
every value must have the constant's type (an int is accepted where a float is expected); anything
else exits with a message that names the key. Then each script checks the values themselves with
check() and fail(): every bad input is one line on stderr, `error: <what>, <why>, <what to do>`, and
exit status 2, before any work starts.
"""
import math
import os
import sys
from ast import literal_eval

RENAMED = {"head_stride": "head_upsample", "stage1_ckpt": "init_from"}  # old config keys, read under their new names
MOVED = {"refit_epochs": "the codebook refit is its own step now: python refit.py --tokenizer=<out_dir>",
         "refit_steps": "the codebook refit is its own step now: python refit.py --tokenizer=<out_dir>"}
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
    """A script's constants (its int, float, bool and str globals) overridden by the command line's config files
    and --key=value (configure), in `namespace` itself, the script's globals(); -> {key: value} of them all."""
    keys = [k for k, v in namespace.items() if not k.startswith("_") and isinstance(v, (int, float, bool, str))]
    namespace.update(configure(sys.argv[1:], {k: namespace[k] for k in keys}))
    return {k: namespace[k] for k in keys}


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
