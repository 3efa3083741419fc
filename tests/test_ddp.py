"""Two processes (torchrun, gloo on CPU) train what one process trains with the same global batch, 4 images
x 2 micro-steps, which each of the 2 ranks runs as 1 micro-step: the same loss at every step and the same
weights (float tolerance: sums in another order), also across a 2-process interruption and resume; only
rank 0 prints and writes. The official single-stage recipe (perceptual terms, the GAN with its LeCam means,
the EMA) gives the one-process weights bit for bit."""
import os
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch

from conftest import ROOT, logged_losses, script_command
from model import PRESETS, TiTok, TiTokConfig
from two_stage.titok import TwoStageConfig, TwoStageTiTok
from test_train_generator import TINY as GENERATOR, make_tokenizer
from test_train_tokenizer import RECIPE, TINY as TOKENIZER


def start(script, *args, nproc=1):
    """`script` as a user runs it, in one process or under torchrun with `nproc`; one thread each."""
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 else []
    return subprocess.Popen([sys.executable, *launcher, *script_command(script), *args], cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(p):
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, out + err
    lines = [line for line in out.splitlines() if line]
    assert len(set(lines)) == len(lines), out  # under torchrun, only rank 0 prints
    return out


def stage1_and_teacher(d):
    """A stage-1 checkpoint and its 2D teacher, untrained (stage 2's mechanics need no trained ones)."""
    torch.manual_seed(0)
    args = dict(image_size=32, patch_size=8, codebook_size=64, **PRESETS["micro"])
    for name, model in (("teacher", TiTok(TiTokConfig(num_latent_tokens=16, layout="2d", **args))),
                        ("stage1", TwoStageTiTok(TwoStageConfig(num_latent_tokens=8, proxy_codebook_size=64, **args)))):
        (d / name).mkdir()
        torch.save({"model": model.state_dict(), "model_args": asdict(model.config)}, d / name / "ckpt.pt")
    return [f"--init_from={d}/stage1", f"--teacher={d}/teacher"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, perceptual_weights):
    """The runs of both tests -> (their directory, {name: stdout}). Every process spends seconds importing
    torch, so the runs that do not wait for another start together (10 processes on 2 cores, ~45 s)."""
    d = tmp_path_factory.mktemp("ddp")
    # dead-code restart on, with a window short enough that codes are re-seeded within the run; the photo
    # recipe's brightness and saturation shifts, drawn per (seed, iteration, rank) like the flips
    tok = [*TOKENIZER, "--dead_code_restart=True", "--usage_window=2", "--eval_interval=3", "--lr_decay_iters=6",
           "--brightness_shift=0.08", "--saturation_shift=0.5"]
    gen = [*GENERATOR, f"--tokenizer={make_tokenizer(d / 'tok')}", "--max_iters=4", "--eval_interval=4", "--dropout=0.1"]
    recipe = [*TOKENIZER, *RECIPE, *perceptual_weights, "--max_iters=4", "--eval_interval=4", "--dead_code_restart=True",
              "--usage_window=2"]
    # the official stage 2: 0.1 x ConvNeXt-S, the GAN, the EMA, on a frozen stage-1 encoder
    stage2 = [*recipe, *stage1_and_teacher(d), "--perceptual_loss=convnext_s", "--perceptual_weight=0.1",
              "--quantizer_weight=0"]
    vae = [*recipe, "--quantize_mode=vae", "--token_size=4", "--ordered_tokens=True"]
    started = {"tokenizer one": start("train_tokenizer.py", *tok, "--max_iters=6", f"--out_dir={d}/tok_one"),
               "tokenizer first": start("train_tokenizer.py", *tok, "--max_iters=3", f"--out_dir={d}/tok_two", nproc=2),
               "generator one": start("train_generator.py", *gen, f"--out_dir={d}/gen_one"),
               "generator two": start("train_generator.py", *gen, f"--out_dir={d}/gen_two", nproc=2),
               "recipe one": start("train_tokenizer.py", *recipe, f"--out_dir={d}/recipe_one"),
               "recipe two": start("train_tokenizer.py", *recipe, f"--out_dir={d}/recipe_two", nproc=2),
               "stage2 one": start("train_tokenizer.py", *stage2, f"--out_dir={d}/stage2_one"),
               "stage2 two": start("train_tokenizer.py", *stage2, f"--out_dir={d}/stage2_two", nproc=2),
               # the VAE, with ordered tokens: each micro-step's posterior sample and each image's kept tokens drawn
               # as one process draws them (training.micro_step_rng)
               "vae one": start("train_tokenizer.py", *vae, f"--out_dir={d}/vae_one"),
               "vae two": start("train_tokenizer.py", *vae, f"--out_dir={d}/vae_two", nproc=2)}
    try:
        out = {name: finish(p) for name, p in started.items()}
        files = sorted(os.listdir(d / "tok_two"))  # after the first half, before the resume writes again
        started["tokenizer second"] = start("train_tokenizer.py", *tok, "--max_iters=6", "--init_from=resume",
                                            f"--out_dir={d}/tok_two", nproc=2)
        out["tokenizer second"] = finish(started["tokenizer second"])
    finally:  # a failed run: stop the others
        for p in started.values():
            if p.poll() is None:
                p.terminate()  # torchrun stops its workers
                p.wait()
    return d, out, files


def same_losses(a, b):
    """Equal up to the last printed digit."""
    assert len(a) == len(b) and a == pytest.approx(b, abs=1.01e-4), (a, b)


def same_weights(one, two):
    a, b = torch.load(one, weights_only=True), torch.load(two, weights_only=True)
    assert a["iter_num"] == b["iter_num"]
    for k, v in a["model"].items():
        assert torch.allclose(v.float(), b["model"][k].float(), rtol=1e-4, atol=1e-6), k


def test_tokenizer_two_processes_equal_one_across_a_resume(runs):
    d, out, files = runs
    one, first, second = out["tokenizer one"], out["tokenizer first"], out["tokenizer second"]
    usage = [float(line.split("codebook usage ")[1].split("%")[0]) for line in one.splitlines() if line.startswith("iter")]
    assert usage[2] > usage[1] + 50, usage  # codes re-seeded at step 2
    assert "iter 3/3 |" in first and "eval 3:" in first and files == ["ckpt.pt", "recon.png"]  # printed, written once
    assert "resumed from" in second
    same_losses(logged_losses(first) + logged_losses(second), logged_losses(one))
    same_weights(d / "tok_one" / "ckpt.pt", d / "tok_two" / "ckpt.pt")


def test_generator_two_processes_equal_one(runs):
    d, out, _ = runs
    one, two = out["generator one"], out["generator two"]
    # the same codes (tokenized in shards and gathered), then the same losses, dropout on, and weights
    a, b = (torch.load(d / name / "tokens.pt", weights_only=True) for name in ("gen_one", "gen_two"))
    assert torch.equal(a["codes"], b["codes"]) and torch.equal(a["labels"], b["labels"])
    same_losses(logged_losses(two), logged_losses(one))
    same_weights(d / "gen_one" / "ckpt.pt", d / "gen_two" / "ckpt.pt")
    assert "iter 4/4 |" in two and "eval 4:" in two
    assert sorted(os.listdir(d / "gen_two")) == ["ckpt.pt", "samples.png", "tokens.pt"]


@pytest.mark.parametrize("run", ["recipe", "stage2", "vae"])
def test_the_official_recipe_two_processes_equal_one_bit_for_bit(runs, run):
    d, out, _ = runs
    one, two = out[f"{run} one"], out[f"{run} two"]
    assert logged_losses(one) == logged_losses(two) and "gan g" in one.splitlines()[-2]
    assert ("stage 2" in one) == (run == "stage2")
    assert ("ordered tokens" in one) == (run == "vae")
    a, b = (torch.load(d / f"{run}_{n}" / "ckpt.pt", weights_only=True) for n in ("one", "two"))
    a, b = ({**x, **x["resume"]} for x in (a, b))  # the weights to use, and the trained ones and the discriminator
    for key in ("model", "raw", "discriminator"):
        assert all(torch.equal(v, b[key][k]) for k, v in a[key].items()), key
    assert a["lecam"] == b["lecam"] != [0.0, 0.0]  # the LeCam means follow the global batch, not rank 0's half
