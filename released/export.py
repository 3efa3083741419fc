"""
A tokenizer trained here, written in the layout of the released single-stage tokenizers (config.json +
model.safetensors), which the official TiTok code and load_tokenizer read:

  python -m released.export --checkpoint=out-tokenizer --out=titok_export
"""
from configurator import fail, script_config
from checkpoints import load_tokenizer
from released.titok import save_released

# -----------------------------------------------------------------------------
checkpoint = ""  # a trainer's out_dir or ckpt.pt
out = ""  # the directory to write
# -----------------------------------------------------------------------------
script_config(globals())
if not checkpoint or not out:
    fail("pass --checkpoint=<a trainer's out_dir or ckpt.pt> and --out=<directory to write>")
try:
    save_released(load_tokenizer(checkpoint), out)
except (OSError, ValueError) as e:
    fail(str(e).splitlines()[0])
print(f"wrote {out}/config.json and model.safetensors (the official layout; load_tokenizer reads it)")
