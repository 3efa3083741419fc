"""Every bad input a user can type is one line on stderr, `error: <what>, <why>, <what to do>`, naming the
input, with exit status 2 and no traceback, before any work. The cases of issue 19 run as subprocesses, as a
user runs the scripts (two at a time: each start imports torch for seconds); the many more that go through
the same checks and loaders run in this process (runpy), where any exception but SystemExit fails the test."""
import os
import runpy
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

import pytest
import torch
from PIL import Image

from model import PRESETS, TiTok, TiTokConfig

from conftest import ROOT, script_command


def images(folder, n):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(folder / f"{i}.png")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Bad files: missing, an empty folder, damaged checkpoints, a generator's checkpoint, a damaged .npz; image
    folders a new user could make: too few images to hold some out, images beside an empty subfolder (a class
    folder), an empty val/, an unreadable val/, a class folder without images, train/ and val/ with other classes."""
    d = tmp_path_factory.mktemp("bad")
    images(d / "few", 20)
    images(d / "beside", 3)
    (d / "beside" / "new").mkdir()
    images(d / "no_val" / "train" / "a", 2)
    (d / "no_val" / "val" / "a").mkdir(parents=True)
    images(d / "bad_val" / "train" / "a", 2)
    (d / "bad_val" / "val" / "a").mkdir(parents=True)
    (d / "bad_val" / "val" / "a" / "0.png").write_text("not an image")
    for name, classes in (("empty_class", ("a", "b")), ("other_classes", ("a", "c"))):
        images(d / name / "train" / "a", 2)
        (d / name / "train" / "b").mkdir()
        for c in classes:
            images(d / name / "val" / c, 1)
    (d / "empty").mkdir()
    for name in ("random", "truncated", "generator"):
        (d / name).mkdir()
    (d / "random" / "ckpt.pt").write_bytes(os.urandom(2000))
    torch.save({"model": {"w": torch.zeros(1000)}, "model_args": {"num_latent_tokens": 8}}, d / "whole.pt")
    (d / "truncated" / "ckpt.pt").write_bytes((d / "whole.pt").read_bytes()[:3000])
    torch.save({"model": {}, "model_args": {"num_tokens": 8, "codebook_size": 64}, "config": {"tokenizer": "out-tok"}},
               d / "generator" / "ckpt.pt")
    (d / "samples.npz").write_bytes(os.urandom(300))
    cfg = TiTokConfig(image_size=32, patch_size=8, num_latent_tokens=8, codebook_size=64, **PRESETS["micro"])
    torch.save({"model": TiTok(cfg).state_dict(), "model_args": asdict(cfg), "config": {}}, d / "tok.pt")
    cfg = TiTokConfig(image_size=32, patch_size=8, num_latent_tokens=8, codebook_size=64, token_size=3,
                      quantize_mode="fsq", fsq_levels=[4, 4, 4], ordered_tokens=True, **PRESETS["micro"])
    torch.save({"model": TiTok(cfg).state_dict(), "model_args": asdict(cfg), "config": {}}, d / "ordered.pt")
    return d


MICRO = ["--model_size=micro", "--image_size=32", "--patch_size=8", "--perceptual_weight=0"]  # quick to build
SUBPROCESS = {  # id: (script, arguments ({d}: the bad files), words the line must hold)
    "missing dataset": ("train_tokenizer.py", ["--dataset={d}/nowhere"], ["dataset folder", "nowhere", "does not exist"]),
    "empty dataset": ("train_tokenizer.py", ["--dataset={d}/empty"], ["dataset folder", "empty", "holds no images"]),
    "image_size 70": ("train_tokenizer.py", ["--dataset=shapes", "--image_size=70"],
                      ["image_size=70", "patch_size=16", "multiple of 16"]),
    "learning_rate -1": ("train_tokenizer.py", ["--dataset=shapes", "--learning_rate=-1"], ["learning_rate", "-1.0", ">= 0"]),
    "resume damaged": ("train_tokenizer.py", ["--dataset=shapes", "--perceptual_weight=0", "--init_from=resume",
                                              "--out_dir={d}/random"],
                       ["random/ckpt.pt", "damaged"]),
    "generator as tokenizer": ("train_generator.py", ["--tokenizer={d}/generator"],
                               ["generator/ckpt.pt", "is a generator checkpoint", "not a tokenizer checkpoint", "out-tok"]),
    "dataset too few images": ("train_tokenizer.py", [*MICRO, "--dataset={d}/few"],
                               ["image folder", "few has 20 images", "too few to hold out 64", "'val' folder"]),
    "dataset other classes": ("train_generator.py", ["--tokenizer={d}/tok.pt", "--dataset={d}/other_classes"],
                              ["class folders", "other_classes/train", "other_classes/val", "only in the first: b",
                               "only in the second: c", "same class folders"]),
    "reconstruct damaged": ("studies/reconstruct.py", ["--tokenizer={d}/truncated"], ["truncated/ckpt.pt", "damaged"]),
}


@pytest.fixture(scope="module")
def subprocess_results(files):
    def run(case):
        script, args, _ = case
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        return subprocess.run([sys.executable, *script_command(script), *(a.format(d=files) for a in args)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
    with ThreadPoolExecutor(2) as pool:
        return dict(zip(SUBPROCESS, pool.map(run, SUBPROCESS.values())))


def one_line(err, words):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert all(w in lines[0] for w in words), (words, err)


@pytest.mark.parametrize("case", SUBPROCESS)
def test_subprocess(case, subprocess_results):
    p = subprocess_results[case]
    assert p.returncode == 2 and "Traceback" not in p.stdout + p.stderr, p.stdout + p.stderr
    one_line(p.stderr, SUBPROCESS[case][2])


IN_PROCESS = [  # (script, arguments ({d}: the bad files), words the line must hold)
    ("train_tokenizer.py", ["--dataset=shapes", "--perceptual_weight=0", "--init_from=resume", "--out_dir={d}/truncated"],
     ["truncated/ckpt.pt", "damaged"]),
    ("train_tokenizer.py", ["--dataset=shapes", "--perceptual_weight=0", "--init_from=resume", "--out_dir={d}/generator"],
     ["generator/ckpt.pt", "is a generator checkpoint", "not a tokenizer checkpoint"]),
    ("train_generator.py", ["--tokenizer={d}/random"], ["random/ckpt.pt", "damaged"]),
    ("sample.py", ["--generator={d}/random"], ["random/ckpt.pt", "damaged"]),
    ("studies/classify.py", ["--npz={d}/samples.npz"], ["samples.npz", "cannot read"]),
    ("studies/classify.py", ["--npz={d}/nowhere.npz"], ["nowhere.npz", "does not exist"]),
    ("fid.py", ["{d}/samples.npz", "{d}/samples.npz"], ["samples.npz", "damaged"]),
    ("fid.py", ["{d}/samples.npz", "{d}/nowhere"], ["nowhere", "does not exist"]),
    ("train_tokenizer.py", ["--batch_size=0"], ["batch_size", "> 0", "not 0"]),
    ("train_tokenizer.py", ["--max_iters=-5"], ["max_iters", "> 0"]),
    ("train_tokenizer.py", ["--eval_interval=0"], ["eval_interval", "> 0"]),
    ("train_tokenizer.py", ["--log_interval=0"], ["log_interval", "> 0"]),
    ("train_tokenizer.py", ["--num_latent_tokens=0"], ["num_latent_tokens", "> 0"]),
    ("train_tokenizer.py", ["--codebook_size=-1"], ["codebook_size", "> 0"]),
    ("train_tokenizer.py", ["--usage_window=0"], ["usage_window", "> 0"]),
    ("train_tokenizer.py", ["--model_size=XL"], ["model_size", "'XL'", "'micro'"]),
    ("two_stage/train_stage1.py", ["--dataset=shapes"], ["needs a teacher", "--teacher"]),
    ("train_tokenizer.py", ["--dataset=shapes", "--stage1_ckpt=out-stage1", "--perceptual_weight=0"], ["init_from='out-stage1'", "no such path"]),
    ("train_tokenizer.py", ["--dataset=shapes", "--teacher=t.bin"], ["teacher='t.bin'", "stage-1 checkpoint", "--init_from"]),
    ("train_tokenizer.py", ["--freeze=decoder"], ["freeze", "'decoder'", "'encoder'"]),
    ("train_tokenizer.py", ["--dataset=shapes", "--perceptual_weight=0", "--dtype=float16"], ["dtype", "'float16'", "'bfloat16'"]),
    ("train_tokenizer.py", ["--refit_epochs=8"], ["refit_epochs", "python -m aids.refit"]),
    ("train_tokenizer.py", ["--layout=3d"], ["layout", "'3d'"]),
    ("train_tokenizer.py", ["--recon_loss=l3"], ["recon_loss", "'l3'"]),
    ("train_tokenizer.py", ["--beta2=1.0"], ["beta2", "in [0, 1)"]),
    ("train_tokenizer.py", ["--learning_rate=1e999"], ["learning_rate", "inf"]),
    ("train_tokenizer.py", ["--ema_decay=1.0"], ["ema_decay", "in [0, 1)"]),
    ("train_tokenizer.py", ["--disc_width=100"], ["disc_width=100", "multiple of 32"]),
    # the official losses: a missing or foreign weight file, an unknown name, a negative start or weight
    ("train_tokenizer.py", ["--dataset=shapes", "--vgg16_weights={d}/nowhere.pth"],
     ["vgg16-397923af.pth", "nowhere.pth", "https://download.pytorch.org/models/vgg16-397923af.pth"]),
    ("train_tokenizer.py", ["--dataset=shapes", "--perceptual_loss=convnext_s", "--convnext_weights={d}/whole.pt"],
     ["whole.pt is not convnext_small-0c510722.pth", "keys or shapes do not fit",
      "https://download.pytorch.org/models/convnext_small-0c510722.pth"]),
    ("train_tokenizer.py", ["--dataset=shapes", "--perceptual_loss=lpips-vgg"], ["unknown perceptual loss 'lpips-vgg'"]),
    ("train_tokenizer.py", ["--dataset=shapes", "--perceptual_weight=0", "--perceptual_loss=lpips-convnext_s-1"],
     ["unknown perceptual loss"]),
    ("train_tokenizer.py", ["--discriminator_start=-1"], ["discriminator_start", ">= 0"]),
    ("train_tokenizer.py", ["--discriminator_weight=-0.1"], ["discriminator_weight", ">= 0"]),
    ("train_tokenizer.py", ["--perceptual_weight=-1"], ["perceptual_weight", ">= 0"]),
    ("train_tokenizer.py", ["--quantize_mode=lfq"], ["quantize_mode", "'lfq'", "'fsq'"]),
    ("train_tokenizer.py", ["--quantize_mode=fsq"], ["fsq_levels=[8, 5, 5, 5]", "token_size=4", "codebook_size=1000"]),
    ("train_tokenizer.py", ["--quantize_mode=fsq", "--fsq_levels=[8, 0]"], ["fsq_levels", "integers >= 2"]),
    ("train_tokenizer.py", ["--quantize_mode=fsq", "--dead_code_restart=True"], ["dead_code_restart", "FSQ", "=False"]),
    ("train_tokenizer.py", ["--ordered_tokens=True", "--init_from={d}/tok.pt"], ["ordered_tokens", "tok.pt", "scratch"]),
    ("train_tokenizer.py", ["--ordered_tokens=True", "--layout=2d"], ["ordered_tokens", "'2d'"]),
    ("train_tokenizer.py", ["--decoder_size=XL"], ["decoder_size", "'XL'"]),
    ("train_tokenizer.py", ["--head_upsample=3"], ["head_upsample=3", "patch_size=16"]),
    ("train_tokenizer.py", ["--layout=2d", "--routing_init=True"], ["routing_init", "'2d'"]),
    ("train_tokenizer.py", ["--routing_scatter=True"], ["routing_scatter", "--routing_init=True"]),
    ("train_tokenizer.py", ["--routing_init=True", "--routing_scatter=True", "--image_size=256", "--model_size=tiny"],
     ["routing_scatter", "16x16 patches", "32 dims per head"]),
    ("train_tokenizer.py", ["--routing_init=True", "--routing_scatter=True", "--image_size=64", "--model_size=tiny",
                            "--num_latent_tokens=3"], ["num_latent_tokens=3", "16 patches", "4 or more"]),
    ("train_tokenizer.py", ["--dataset="], ["dataset is empty"]),
    ("train_tokenizer.py", ["--init_from=latest"], ["init_from", "'latest'", "'resume'"]),
    ("train_tokenizer.py", ["--seed=-1"], ["seed", ">= 0"]),
    ("train_tokenizer.py", ["--dataset=shapes", "--perceptual_weight=0", "--device=cuda:99"], ["cuda:99", "not available"]),
    ("train_tokenizer.py", ["--dataset=shapes", "--perceptual_weight=0", "--device=gpu"], ["device='gpu'"]),
    ("train_tokenizer.py", ["--dataset=shapes", "--perceptual_weight=0", "--dtype=fp8"], ["dtype", "'fp8'"]),
    ("train_tokenizer.py", ["--out_dir=README.md"], ["out_dir='README.md'", "is a file"]),
    ("train_generator.py", ["--batch_size=-2"], ["batch_size", "> 0"]),
    ("train_generator.py", ["--hidden_size=30", "--heads=4"], ["hidden_size=30", "heads=4"]),
    ("train_generator.py", ["--dropout=1.5"], ["dropout", "in [0, 1]"]),
    ("train_generator.py", ["--model_type=GPT"], ["model_type", "'GPT'"]),
    ("train_generator.py", ["--guidance_decay=cosine"], ["guidance_decay", "'cosine'"]),
    ("train_generator.py", ["--tokenizer={d}/tok.pt", "--dataset=/nowhere/at/all"], ["dataset folder", "/nowhere/at/all"]),
    ("train_generator.py", ["--tokenizer={d}/whole.pt"], ["whole.pt", "keys or shapes do not fit", "missing key"]),
    # image folders: every problem of the training or held-out images, before any work
    ("train_tokenizer.py", [*MICRO, "--dataset={d}/beside"], ["no images", "class folders of", "beside (new: its subfolders",
                                                              "images beside them are not read"]),
    ("train_tokenizer.py", [*MICRO, "--dataset={d}/no_val"], ["no images", "no_val/val (a: its subfolders"]),
    ("train_generator.py", ["--tokenizer={d}/tok.pt", "--dataset={d}/few"], ["few has 20 images", "too few"]),
    ("train_generator.py", ["--tokenizer={d}/tok.pt", "--dataset={d}/empty_class"],
     ["1 class folder(s) of", "empty_class/train hold no training images (b)", "never saw"]),
    ("sample.py", ["--samples_per_class=0"], ["samples_per_class", "> 0"]),
    ("sample.py", ["--guidance_scale=-1"], ["guidance_scale", ">= 0"]),
    ("sample.py", ["--num_steps=2.5"], ["num_steps=2.5", "integer"]),
    ("studies/reconstruct.py", ["--eval_images=0"], ["eval_images", "> 0"]),
    ("studies/reconstruct.py", ["--tokenizer="], ["tokenizer=''"]),
    ("studies/reconstruct.py", ["--keep=1,a"], ["keep='1,a'", "comma-separated"]),
    ("studies/reconstruct.py", ["--tokenizer={d}/tok.pt", "--keep=1,2"], ["keep", "tok.pt", "without ordered_tokens"]),
    ("studies/reconstruct.py", ["--tokenizer={d}/ordered.pt", "--keep=1,9"], ["keep='1,9'", "1..8"]),
    ("released/export.py", ["--checkpoint={d}/ordered.pt", "--out={d}/exported"], ["official code", "ordered", "FSQ"]),
    ("studies/classify.py", ["--npz=", "--image_size=4"], ["image_size=4", "8 or more"]),
    ("studies/classify.py", ["--npz=", "--steps=0"], ["steps", "> 0"]),
]


@pytest.mark.parametrize("script, args, words", IN_PROCESS, ids=[f"{s} {' '.join(a)}" for s, a, _ in IN_PROCESS])
def test_in_process(script, args, words, files, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", [script, *(a.format(d=files) for a in args)])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(ROOT / script), run_name="__main__")
    assert e.value.code == 2
    one_line(capsys.readouterr().err, words)


def test_gradient_accumulation_must_divide_between_processes(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun --nproc_per_node=2 sets it
    monkeypatch.setattr(sys, "argv", ["train_tokenizer.py", "--gradient_accumulation_steps=3"])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(ROOT / "train_tokenizer.py"), run_name="__main__")
    assert e.value.code == 2
    one_line(capsys.readouterr().err, ["gradient_accumulation_steps=3", "2 processes", "multiple of 2"])


def test_a_folder_of_unreadable_images_stops_before_any_work(files, monkeypatch, capsys):
    """Held-out images none of which can be read: each named in a warning, then the error line, not a crash at the
    first evaluation."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["train_tokenizer.py", *MICRO, f"--dataset={files}/bad_val"])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(ROOT / "train_tokenizer.py"), run_name="__main__")
    assert e.value.code == 2
    warning, error = capsys.readouterr().err.strip().splitlines()
    assert warning.startswith("warning: skipping unreadable image") and "bad_val/val/a/0.png" in warning
    one_line(error, ["none of the 1 image files under", "bad_val/val", "could be read"])
