"""The generator training script end to end, as a user runs it: a tiny tokenizer, tiny MaskGIT, a few steps."""
import os

import pytest
import torch

from conftest import logged_losses, run_script
from data import Shapes
from model import PRESETS, TiTok, TiTokConfig

TINY = ["--hidden_size=32", "--depth=1", "--heads=2", "--mlp_dim=64", "--batch_size=8", "--gradient_accumulation_steps=2",
        "--num_workers=0", "--tokenize_batch_size=32", "--eval_batches=1", "--log_interval=1", "--warmup_iters=2",
        "--learning_rate=1e-2", "--num_steps=4", "--compile=False"]


def make_tokenizer(path, codebook_size=64, num_tokens=8, seed=0):
    """A train_tokenizer.py checkpoint of an untrained micro TiTok on 32x32 shapes whose codebook is
    seeded with encoder outputs, so that different images get different codes."""
    args = dict(image_size=32, patch_size=8, num_latent_tokens=num_tokens, codebook_size=codebook_size, token_size=8,
                **PRESETS["micro"])
    torch.manual_seed(seed)
    model = TiTok(TiTokConfig(**args)).eval()
    images = torch.stack([Shapes(32, "train", 64, seed)[i][0] for i in range(-(-codebook_size // num_tokens))])
    with torch.no_grad():
        model.quantizer.codebook.weight.copy_(model.encoder(images).flatten(0, 1)[:codebook_size])
    os.makedirs(path, exist_ok=True)
    torch.save({"model": model.state_dict(), "model_args": args, "iter_num": 0,
                "config": {"dataset": "shapes", "num_train": 64, "seed": seed}}, os.path.join(path, "ckpt.pt"))
    return path


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def run(*args, check=True):
    return run_script("train_generator.py", *TINY, *args, check=check)




def test_exact_resume_and_loss_goes_down(tmp_path, tokenizer):
    tok = f"--tokenizer={tokenizer}", "--codebook_init=True"  # with the codebook init
    straight = run(*tok, f"--out_dir={tmp_path}/a", "--max_iters=30", "--eval_interval=15")
    first = run(*tok, f"--out_dir={tmp_path}/b", "--max_iters=15", "--lr_decay_iters=30", "--eval_interval=15")
    second = run(*tok, f"--out_dir={tmp_path}/b", "--max_iters=30", "--eval_interval=15", "--init_from=resume")
    assert "tokenizing 64 training images" in first.stdout
    assert "reusing the token cache" in second.stdout and "tokenizing:" not in second.stdout
    assert "resumed from" in second.stdout
    # step for step the same losses, and bit-identical weights and optimizer state
    assert logged_losses(first.stdout) + logged_losses(second.stdout) == logged_losses(straight.stdout)
    a = torch.load(tmp_path / "a" / "ckpt.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "ckpt.pt", weights_only=True)
    assert a["iter_num"] == b["iter_num"] == 30
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert torch.equal(a["resume"]["optimizer"]["state"][0]["exp_avg"], b["resume"]["optimizer"]["state"][0]["exp_avg"])
    curve = logged_losses(straight.stdout)
    assert sum(curve[-5:]) < 0.75 * sum(curve[:5]), curve
    assert set(a) == {"model", "model_args", "iter_num", "config", "resume"} and set(a["resume"]) == {"optimizer", "rng"}
    assert (a["model_args"]["codebook_size"], a["model_args"]["num_tokens"], a["model_args"]["num_classes"]) == (64, 8, 10)
    assert (tmp_path / "a" / "samples.png").is_file()
    cache = torch.load(tmp_path / "a" / "tokens.pt", weights_only=True)
    assert cache["codes"].shape == (64, 2, 8) and cache["labels"].tolist() == [i % 10 for i in range(64)]
    assert not torch.equal(cache["codes"][:, 0], cache["codes"][:, 1])  # the flips are tokenized too


def test_token_cache_follows_the_tokenizer_and_nan_guard(tmp_path):
    tok = make_tokenizer(tmp_path / "tok")
    out = f"--out_dir={tmp_path}/out"
    run(f"--tokenizer={tok}", out, "--max_iters=2", "--eval_interval=2")
    codes = torch.load(tmp_path / "out" / "tokens.pt", weights_only=True)["codes"]
    ckpt = tmp_path / "out" / "ckpt.pt"
    saved = ckpt.read_bytes()
    make_tokenizer(tok, seed=1)  # retrained: another file, other codes
    # a loss that blows up stops the run and leaves the last checkpoint as it was (it re-tokenizes first)
    p = run(f"--tokenizer={tok}", out, "--max_iters=6", "--eval_interval=2", "--init_from=resume",
            "--learning_rate=1e30", "--warmup_iters=0", "--grad_clip=0.0", check=False)
    assert "is out of date (tokenizer" in p.stdout and "re-tokenizing" in p.stdout, p.stdout
    assert not torch.equal(torch.load(tmp_path / "out" / "tokens.pt", weights_only=True)["codes"], codes)
    assert p.returncode != 0 and "NaN/inf" in p.stderr, p.stdout + p.stderr
    assert ckpt.read_bytes() == saved


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    p = run(f"--tokenizer={tmp_path}/nowhere", f"--out_dir={tmp_path}", check=False)
    assert p.returncode != 0 and "tokenizer checkpoint" in p.stderr and "does not exist" in p.stderr, p.stderr
    assert not (tmp_path / "tokens.pt").exists()


def test_sample_py_samples_with_the_training_evaluations_settings(tmp_path, tokenizer):
    """The sampling settings that the training evaluation used are stored with the model, and sample.py, given
    the checkpoint alone, uses them."""
    run(f"--tokenizer={tokenizer}", f"--out_dir={tmp_path}", "--max_iters=1", "--eval_interval=1",
        "--softmax_temperature_annealing=False", "--randomize_temperature=3.0", "--guidance_scale=2.0")
    args = torch.load(tmp_path / "ckpt.pt", weights_only=True)["model_args"]
    assert (args["softmax_temperature_annealing"], args["randomize_temperature"], args["guidance_scale"]) == (False, 3.0, 2.0)
    p = run_script("sample.py", f"--generator={tmp_path}", "--samples_per_class=1", f"--out={tmp_path}/samples")
    assert "guidance_scale 2.0" in p.stdout and "randomize_temperature 3.0, softmax_temperature_annealing False" in p.stdout


def test_the_generator_trains_and_samples_on_fsq_codes(tmp_path):
    """FSQ's codes are integers in [0, prod(levels)): the generator, its codebook init (the grid's points) and sample.py
    take them as VQ codes."""
    args = dict(image_size=32, patch_size=8, num_latent_tokens=8, quantize_mode="fsq", fsq_levels=[4, 4, 4], token_size=3,
                codebook_size=64, **PRESETS["micro"])
    torch.manual_seed(0)
    os.makedirs(tmp_path / "tok")
    torch.save({"model": TiTok(TiTokConfig(**args)).state_dict(), "model_args": args, "iter_num": 0,
                "config": {"dataset": "shapes", "num_train": 64, "seed": 0}}, tmp_path / "tok" / "ckpt.pt")
    p = run(f"--tokenizer={tmp_path}/tok", "--codebook_init=True", f"--out_dir={tmp_path}/gen", "--max_iters=3",
            "--eval_interval=3")
    assert "(codebook 64, 10 classes)" in p.stdout and "eval 3:" in p.stdout
    codes = torch.load(tmp_path / "gen" / "tokens.pt", weights_only=True)["codes"]
    assert codes.shape == (64, 2, 8) and 0 <= codes.min() and codes.max() < 64 and len(codes.unique()) > 1
    p = run_script("sample.py", f"--generator={tmp_path}/gen", "--samples_per_class=1", f"--out={tmp_path}/samples")
    assert (tmp_path / "samples.npz").is_file() and "wrote" in p.stdout
