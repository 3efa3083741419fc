"""The training script end to end, as a user runs it: tiny model, synthetic data, a few steps."""
import runpy
import sys

import torch
from PIL import Image

from checkpoints import load_tokenizer
from conftest import ROOT, logged_losses, run_script
from model import TiTok

TINY = ["--dataset=shapes", "--image_size=32", "--patch_size=8", "--model_size=micro", "--num_latent_tokens=8",
        "--codebook_size=64", "--num_train=64", "--batch_size=4", "--gradient_accumulation_steps=2", "--num_workers=0",
        "--eval_batches=1", "--log_interval=1", "--warmup_iters=2", "--learning_rate=3e-3", "--compile=False",
        "--perceptual_weight=0", "--discriminator_weight=0", "--ema_decay=0"]  # pixels only, as the CPU demo
# every term of the official single-stage recipe, the GAN from step 2, on random perceptual weights (conftest)
RECIPE = ["--perceptual_weight=1.1", "--discriminator_weight=0.1", "--discriminator_start=2", "--disc_width=32",
          "--disc_stages=2", "--ema_decay=0.999", "--batch_size=2"]


def run(*args, check=True):
    return run_script("train_tokenizer.py", *TINY, *args, check=check)


def test_exact_resume_and_loss_goes_down(tmp_path):
    restart = "--dead_code_restart=True", "--usage_window=5"  # restarts after the resume too: their randomness resumes
    straight = run(f"--out_dir={tmp_path}/a", "--max_iters=30", "--eval_interval=15", *restart)
    first = run(f"--out_dir={tmp_path}/b", "--max_iters=15", "--lr_decay_iters=30", "--eval_interval=15", *restart)
    second = run(f"--out_dir={tmp_path}/b", "--max_iters=30", "--eval_interval=15", "--init_from=resume", *restart)
    assert "resumed from" in second.stdout
    # step for step the same losses, and bit-identical weights, optimizer and quantizer bookkeeping
    assert logged_losses(first.stdout) + logged_losses(second.stdout) == logged_losses(straight.stdout)
    a = torch.load(tmp_path / "a" / "ckpt.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "ckpt.pt", weights_only=True)
    assert a["iter_num"] == b["iter_num"] == 30
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert torch.equal(a["resume"]["optimizer"]["state"][0]["exp_avg"], b["resume"]["optimizer"]["state"][0]["exp_avg"])
    curve = logged_losses(straight.stdout)
    assert sum(curve[-5:]) < 0.6 * sum(curve[:5]), curve
    assert (tmp_path / "a" / "recon.png").is_file()
    # the checkpoint convention (training.py): the weights to use, what builds them, and what only resuming needs
    assert set(a) == {"model", "model_args", "config", "iter_num", "resume"}
    assert set(a["resume"]) == {"optimizer", "rng"}
    # the previous checkpoint is kept beside the latest: the one of iteration 15
    assert torch.load(tmp_path / "a" / "ckpt-prev.pt", weights_only=True)["iter_num"] == 15


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path):
    run(f"--out_dir={tmp_path}", "--max_iters=4", "--eval_interval=4")
    ckpt = tmp_path / "ckpt.pt"
    before = ckpt.read_bytes()
    p = run(f"--out_dir={tmp_path}", "--max_iters=8", "--eval_interval=2", "--init_from=resume",
            "--learning_rate=1e30", "--warmup_iters=0", "--grad_clip=0.0", check=False)
    assert p.returncode != 0 and "NaN/inf" in p.stderr, p.stdout + p.stderr
    assert ckpt.read_bytes() == before


def test_clear_errors(tmp_path):
    p = run(f"--out_dir={tmp_path}", "--init_from=resume", check=False)
    assert p.returncode != 0 and "ckpt.pt does not exist" in p.stderr
    p = run("--learnig_rate=1", check=False)
    assert p.returncode == 2 and "unknown config key 'learnig_rate'" in p.stderr
    p = run(f"--dataset={tmp_path}/nowhere", check=False)
    assert p.returncode != 0 and "does not exist" in p.stderr


def test_a_folder_without_val_is_evaluated_on_images_it_never_trains_on(tmp_path):
    (tmp_path / "photos").mkdir()
    for i in range(80):
        Image.new("RGB", (40, 40), (3 * i, 100, 200 - 2 * i)).save(tmp_path / "photos" / f"{i}.png")
    p = run(f"--out_dir={tmp_path}/out", f"--dataset={tmp_path}/photos", "--max_iters=1", "--eval_interval=1")
    assert f"held-out: 64 of 80 images of {tmp_path}/photos, never trained on" in p.stdout
    assert ", 16 training images," in p.stdout


def test_the_official_recipe_crosses_the_gan_start_and_resumes_exactly(perceptual_weights, tmp_path):
    recipe = [*RECIPE, *perceptual_weights, "--eval_interval=2"]
    straight = run(f"--out_dir={tmp_path}/a", "--max_iters=4", *recipe)
    first = run(f"--out_dir={tmp_path}/b", "--max_iters=2", "--lr_decay_iters=4", *recipe)
    second = run(f"--out_dir={tmp_path}/b", "--max_iters=4", "--init_from=resume", *recipe)
    lines = [line for line in straight.stdout.splitlines() if line.startswith("iter ")]
    assert all("| perceptual " in line for line in lines)
    assert ["gan g" in line for line in lines] == [False, False, True, True]
    assert "1.1 x lpips-convnext_s-1.0-0.1 + GAN x 0.1 from step 2, EMA 0.999" in straight.stdout
    assert "held-out PSNR (EMA weights)" in straight.stdout
    # step for step: the losses, the EMA ('model') and trained ('raw') weights, the discriminator, both optimizers
    # and the LeCam running means
    assert logged_losses(first.stdout) + logged_losses(second.stdout) == logged_losses(straight.stdout)
    a, b = (torch.load(tmp_path / x / "ckpt.pt", weights_only=True) for x in "ab")
    a["raw"], b["raw"] = a["resume"]["raw"], b["resume"]["raw"]
    a["discriminator"], b["discriminator"] = a["resume"]["discriminator"], b["resume"]["discriminator"]
    for key in ("model", "raw", "discriminator"):
        assert a[key].keys() == b[key].keys() and all(torch.equal(v, b[key][k]) for k, v in a[key].items()), key
    for key in ("optimizer", "disc_optimizer"):
        assert torch.equal(a["resume"][key]["state"][0]["exp_avg"], b["resume"][key]["state"][0]["exp_avg"]), key
    assert a["resume"]["lecam"] == b["resume"]["lecam"] and a["resume"]["lecam"] != [0.0, 0.0]
    assert any(not torch.equal(a["model"][k], v) for k, v in a["raw"].items())  # 'model' is the average


def test_vae_and_separate_decoder_train(tmp_path):
    """The released VAE layout: continuous tokens, a sampled latent and its KL in training; a decoder of its own size."""
    p = run(f"--out_dir={tmp_path}", "--quantize_mode=vae", "--token_size=4", "--decoder_size=tiny", "--max_iters=6",
            "--eval_interval=6")
    assert "(1d, vae)" in p.stdout and "| kl " in p.stdout and "codebook usage" not in p.stdout
    curve = logged_losses(p.stdout)
    assert curve[-1] < curve[0], curve
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert ckpt["model_args"]["decoder_width"] == 128 and ckpt["model_args"]["width"] == 32
    assert not any(k.startswith("quantizer.") for k in ckpt["model"])


def test_ordered_tokens_and_fsq_resume_exactly_and_load_back(tmp_path):
    """Both settings at once: the tail drop's draws come from each micro-step's generator, so a resumed run is the
    straight run; the checkpoint records them, and load_tokenizer rebuilds a model that decodes any first k codes."""
    both = "--ordered_tokens=True", "--quantize_mode=fsq", "--fsq_levels=[4, 4, 4]", "--token_size=3"
    straight = run(f"--out_dir={tmp_path}/a", "--max_iters=12", "--eval_interval=6", *both)
    first = run(f"--out_dir={tmp_path}/b", "--max_iters=6", "--lr_decay_iters=12", "--eval_interval=6", *both)
    second = run(f"--out_dir={tmp_path}/b", "--max_iters=12", "--eval_interval=6", "--init_from=resume", *both)
    assert "(1d, fsq [4, 4, 4], ordered tokens)" in straight.stdout and "| codebook usage " in straight.stdout
    assert logged_losses(first.stdout) + logged_losses(second.stdout) == logged_losses(straight.stdout)
    a, b = (torch.load(tmp_path / x / "ckpt.pt", weights_only=True) for x in "ab")
    assert all(torch.equal(v, b["model"][k]) for k, v in a["model"].items())
    assert a["model_args"]["ordered_tokens"] is True and a["model_args"]["fsq_levels"] == [4, 4, 4]
    tok = load_tokenizer(tmp_path / "a")
    codes = tok.encode(torch.rand(2, 3, 32, 32))
    assert codes.max() < 64 and tok.decode(codes[:, :3]).shape == (2, 3, 32, 32)
    curve = logged_losses(straight.stdout)
    assert sum(curve[-3:]) < sum(curve[:3]), curve


def test_ordered_tokens_keep_k_per_image_in_training_only(tmp_path, monkeypatch, capsys):
    """What the trainer passes to the model: a k in 1..K for each image in training, drawn per image (not one per
    batch), and nothing in its evaluation: every token."""
    calls, forward = [], TiTok.forward
    monkeypatch.setattr(TiTok, "forward", lambda self, x, keep=None: calls.append((self.training, keep)) or forward(self, x, keep))
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["train_tokenizer.py", *TINY, "--ordered_tokens=True", "--max_iters=4",
                                      "--eval_interval=4", f"--out_dir={tmp_path}"])
    runpy.run_path(str(ROOT / "train_tokenizer.py"), run_name="__main__")
    drawn = [keep for training, keep in calls if training]
    assert len(drawn) == 8 and all(k.shape == (4,) and 1 <= k.min() and k.max() <= 8 for k in drawn)
    assert any(len(k.unique()) > 1 for k in drawn) and len(torch.cat(drawn).unique()) > 4
    assert [keep for training, keep in calls if not training] == [None]  # the held-out evaluation: one batch
