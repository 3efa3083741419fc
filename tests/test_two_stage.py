"""The two-stage recipe (stage 1: proxy codes of a 2D teacher, train_stage1.py; stage 2: decoder finetuning,
train_tokenizer.py with init_from a stage-1 checkpoint) and the 2D layout, end to end as a user runs them (the teacher:
train_tokenizer.py): micro models, 32x32 images, a few steps."""
import shutil

import pytest
import torch
import torch.nn.functional as F

from conftest import logged_losses, official_fixture, run_script
from data import batches, make_dataset
from model import PRESETS, TiTok, TiTokConfig
from checkpoints import load_tokenizer
from two_stage.titok import proxy_codes, proxy_loss

DATA = ["--dataset=shapes", "--num_train=64", "--batch_size=4", "--gradient_accumulation_steps=1", "--num_workers=0",
        "--eval_batches=1", "--log_interval=1", "--warmup_iters=2", "--learning_rate=3e-3", "--compile=False"]
COMMON = [*DATA, "--image_size=32", "--patch_size=8", "--model_size=micro", "--codebook_size=64"]
PIXELS = ["--perceptual_weight=0", "--discriminator_weight=0", "--ema_decay=0"]  # train_tokenizer.py's pixel-only run
STAGE2 = [*DATA, "--perceptual_weight=0", "--quantizer_weight=0", "--disc_width=32", "--disc_stages=2"]


def run(*args, check=True, script="two_stage/train_stage1.py"):
    return run_script(script, *COMMON, *args, check=check)


def ckpt(path):
    """A checkpoint, its "resume" part (training.py's convention) read as top-level keys."""
    c = torch.load(path / "ckpt.pt", weights_only=True)
    return {**c, **c.get("resume", {})}


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    """A 2D teacher trained here (a few steps: its codes are still varied), and a stage-1 model on its codes."""
    d = tmp_path_factory.mktemp("two_stage")
    run(f"--out_dir={d}/teacher", "--layout=2d", "--max_iters=4", "--eval_interval=4", "--learning_rate=1e-3", *PIXELS,
        script="train_tokenizer.py")
    p = run(f"--out_dir={d}/stage1", f"--teacher={d}/teacher", "--num_latent_tokens=8", "--max_iters=16",
            "--eval_interval=16")
    return d, p.stdout


def stage2(d, out, *args, check=True):
    return run_script("train_tokenizer.py", f"--out_dir={out}", f"--teacher={d}/teacher", f"--init_from={d}/stage1",
                      *STAGE2, *args, check=check)


def state(sd, prefix):
    """The weights under prefix; not the codebook upkeep's buffers, stage 1's training state."""
    return {k: v for k, v in sd.items() if k.startswith(prefix) and ".upkeep." not in k}


def test_layouts_give_k_or_grid_codes():
    torch.manual_seed(0)
    args = dict(image_size=32, patch_size=8, codebook_size=64, **PRESETS["micro"])
    x = torch.rand(3, 3, 32, 32)
    one = TiTok(TiTokConfig(num_latent_tokens=8, **args)).eval()
    two = TiTok(TiTokConfig(num_latent_tokens=16, layout="2d", **args)).eval()
    assert one.encode(x).shape == (3, 8)  # K codes
    assert two.encode(x).shape == (3, 16)  # g*g = 4*4 codes, one per patch
    assert two.decode(two.encode(x)).shape == x.shape
    names = {n for n, _ in two.named_parameters()}
    assert not names & {"encoder.latent_tokens", "decoder.mask_token", "decoder.latent_token_positional_embedding"}
    with pytest.raises(ValueError, match="num_latent_tokens must be 16"):
        TiTok(TiTokConfig(num_latent_tokens=8, layout="2d", **args))


def test_proxy_codes_are_fp32_under_bf16_autocast():
    """The teacher's codes, the targets of stage 1, do not depend on the trainer's precision: under bf16 autocast
    (as on CUDA) they are the fp32 codes, where the teacher's own bf16 forward picks other codes."""
    torch.manual_seed(0)
    teacher = TiTok(TiTokConfig(image_size=32, patch_size=8, layout="2d", num_latent_tokens=16, codebook_size=256,
                                **PRESETS["micro"])).eval()
    x = torch.rand(8, 3, 32, 32)
    with torch.no_grad():  # two codes near each token: bf16's rounding of the encoder decides between them
        z = teacher.encoder(x).flatten(0, 1)
        teacher.quantizer.codebook.weight.copy_(torch.cat([z, z]) + 0.003 * torch.randn(256, 12))
    fp32 = teacher.encode(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (teacher.encode(x) != fp32).sum() > 10
        assert torch.equal(proxy_codes(teacher, x), fp32)


def test_proxy_loss_is_cross_entropy_to_the_teacher_codes():
    torch.manual_seed(0)
    logits, codes = torch.randn(2, 10, 3, 3), torch.randint(0, 10, (2, 9))  # 9 codes in raster order
    loss, accuracy = proxy_loss(logits, codes)
    # per patch (row i, column j) the code at raster index 3 i + j
    reference = -torch.stack([logits[b, :, i, j].log_softmax(0)[codes[b, 3 * i + j]]
                              for b in range(2) for i in range(3) for j in range(3)]).mean()
    assert torch.allclose(loss, reference, atol=1e-6)
    perfect = 100.0 * F.one_hot(codes, 10).float().transpose(1, 2).reshape(2, 10, 3, 3)  # a teacher-perfect decoder
    loss, accuracy = proxy_loss(perfect, codes)
    assert loss < 1e-6 and accuracy == 1.0
    perfect[1, :, 2, 0] = perfect[1, :, 2, 0].roll(1)  # one patch wrong
    assert proxy_loss(perfect, codes)[1] == pytest.approx(17 / 18)


def test_stage1_logs_the_cross_entropy_to_the_teacher_codes(stage1, tmp_path):
    d, stdout = stage1
    ce = [float(line.split("| ce ")[1].split()[0]) for line in stdout.splitlines() if line.startswith("iter ")]
    assert sum(ce[-4:]) < 0.8 * sum(ce[:4]), ce
    assert "proxy-code accuracy" in stdout.splitlines()[-1]  # in the evaluation too
    # learning rate 0: the checkpoint holds the weights that computed the first logged loss
    p = run(f"--out_dir={tmp_path}", f"--teacher={d}/teacher", "--num_latent_tokens=8", "--max_iters=1",
            "--eval_interval=1", "--learning_rate=0.0", "--min_lr=0.0")
    line = next(line for line in p.stdout.splitlines() if line.startswith("iter 1/"))
    model, teacher = load_tokenizer(tmp_path), load_tokenizer(d / "teacher")
    images, _ = next(batches(make_dataset("shapes", 32, "train", 64, 0), 4, 0, 0, flip=True))  # iteration 0's batch
    with torch.no_grad():
        codes = teacher.encode(images)
        logits, q = model(images)
    assert codes.unique().numel() > 3  # the teacher's codes vary, so the check below means something
    ce = F.cross_entropy(logits, codes.view(4, 4, 4))
    assert logged_losses(p.stdout)[0] == pytest.approx((ce + q["commitment"] + q["codebook"]).item(), abs=1.5e-4)
    assert float(line.split("| ce ")[1].split()[0]) == pytest.approx(ce.item(), abs=1.5e-4)
    accuracy = (logits.argmax(1).flatten(1) == codes).float().mean().item()
    assert f"proxy-code accuracy {accuracy:.1%}" in line


def test_stage2_attaches_the_teacher_freezes_the_codes_and_evaluates_the_ema(stage1, tmp_path):
    d, _ = stage1
    s1, teacher = ckpt(d / "stage1"), ckpt(d / "teacher")
    # learning rate 0: what stage 2 starts from, stage 1's model with the teacher's codebook and decoder attached
    stage2(d, tmp_path / "start", "--max_iters=1", "--eval_interval=1", "--learning_rate=0.0", "--min_lr=0.0",
           "--discriminator_weight=0")
    start = ckpt(tmp_path / "start")["model"]
    assert all(torch.equal(start[k], v) for k, v in state(s1["model"], "").items())
    assert all(torch.equal(start["pixel_" + k], v) for k, v in teacher["model"].items() if k.startswith("decoder."))
    assert torch.equal(start["pixel_codebook"], F.normalize(teacher["model"]["quantizer.codebook.weight"], dim=-1))
    p = stage2(d, tmp_path, "--max_iters=4", "--eval_interval=4", "--ema_decay=0.9", "--discriminator_start=2")
    s2 = ckpt(tmp_path)
    for part in ("encoder.", "quantizer."):  # parameters and buffers (codebook usage bookkeeping) untouched
        before, after, raw = state(s1["model"], part), state(s2["model"], part), state(s2["raw"], part)
        assert before.keys() == after.keys() == raw.keys(), part
        assert all(torch.equal(v, after[k]) and torch.equal(v, raw[k]) for k, v in before.items()), part
    raw = s2["raw"]
    assert any(not torch.equal(raw[k], v) for k, v in state(s1["model"], "decoder.").items())  # the decoder trained
    assert any(not torch.equal(raw["pixel_" + k], v) for k, v in state(teacher["model"], "decoder.").items())
    # the codes are stage 1's
    x = torch.rand(4, 3, 32, 32)
    assert torch.equal(load_tokenizer(tmp_path).encode(x), load_tokenizer(d / "stage1").encode(x))
    # the printed held-out PSNR is that of the saved (average) weights, not of the trained ones
    images, _ = next(batches(make_dataset("shapes", 32, "val", 64, 0), 4))
    m = load_tokenizer(tmp_path)

    def psnr(model):
        with torch.no_grad():
            mse = (model(images)[0].clamp(0, 1) - images).pow(2).flatten(1).mean(1)
        return (10 * torch.log10(1 / mse)).mean().item()

    printed = float(p.stdout.split("held-out PSNR (EMA weights) ")[1].split()[0])
    assert printed == pytest.approx(psnr(m), abs=0.006)
    m.load_state_dict(raw)
    assert abs(psnr(m) - printed) > 0.01


def test_gan_off_before_its_start_and_stage2_resumes_exactly(stage1, tmp_path):
    d, _ = stage1
    gan = ["--discriminator_start=2", "--eval_interval=2"]
    straight = stage2(d, tmp_path / "a", "--max_iters=4", *gan)
    first = stage2(d, tmp_path / "b", "--max_iters=2", "--lr_decay_iters=4", *gan)
    b2 = ckpt(tmp_path / "b")  # at iteration 2, before the resumed run overwrites it
    second = stage2(d, tmp_path / "b", "--max_iters=4", "--init_from=resume", *gan)
    no_gan = stage2(d, tmp_path / "c", "--max_iters=2", "--discriminator_weight=0.0")
    lines = [line for line in straight.stdout.splitlines() if line.startswith("iter ")]
    assert ["gan g" in line for line in lines] == [False, False, True, True]
    # before discriminator_start: exactly the losses of a run without a GAN, and no discriminator update
    assert logged_losses(first.stdout) == logged_losses(no_gan.stdout)
    assert b2["disc_optimizer"]["state"] == {} and b2["lecam"] == [0.0, 0.0]  # LeCam untouched
    a, b = ckpt(tmp_path / "a"), ckpt(tmp_path / "b")
    assert any(not torch.equal(v, b2["discriminator"][k]) for k, v in a["discriminator"].items())  # trained after
    assert a["lecam"] != [0.0, 0.0]
    # exact resume across the GAN start: losses, averaged and trained weights, discriminator, optimizers, LeCam
    assert logged_losses(first.stdout) + logged_losses(second.stdout) == logged_losses(straight.stdout)
    for key in ("model", "raw", "discriminator"):
        assert a[key].keys() == b[key].keys() and all(torch.equal(v, b[key][k]) for k, v in a[key].items()), key
    for key in ("optimizer", "disc_optimizer"):
        assert torch.equal(a[key]["state"][0]["exp_avg"], b[key]["state"][0]["exp_avg"]), key
    assert a["lecam"] == b["lecam"]
    assert any(not torch.equal(a["model"][k], v) for k, v in a["raw"].items())  # 'model' is the average, not raw


def test_stage2_refuses_mismatches_before_training(stage1, tmp_path):
    d, _ = stage1
    p = run_script("train_tokenizer.py", f"--out_dir={tmp_path}/out", f"--teacher={d}/teacher",
                   f"--init_from={d}/teacher", *STAGE2, check=False)
    assert p.returncode == 2 and "is not a stage-1 checkpoint" in p.stderr
    # a teacher whose codebook (32 codes) is not the one the stage-1 head predicts (64)
    t = ckpt(d / "teacher")
    t["model_args"]["codebook_size"] = 32
    t["model"]["quantizer.codebook.weight"] = t["model"]["quantizer.codebook.weight"][:32]
    t["model"]["quantizer.upkeep.last_used"] = t["model"]["quantizer.upkeep.last_used"][:32]
    (tmp_path / "small").mkdir()
    torch.save(t, tmp_path / "small" / "ckpt.pt")
    p = run_script("train_tokenizer.py", f"--out_dir={tmp_path}/out", f"--teacher={tmp_path}/small",
                   f"--init_from={d}/stage1", *STAGE2, check=False)
    assert p.returncode == 2 and "has 32 codes, but the stage-1 model" in p.stderr and "predicts 64" in p.stderr
    p = run(f"--out_dir={tmp_path}/out", f"--teacher={d}/stage1", check=False)  # a 1D model is no teacher
    assert p.returncode == 2 and "train one with --layout=2d" in p.stderr
    p = run_script("train_tokenizer.py", f"--out_dir={tmp_path}/out", f"--init_from={d}/stage1", *STAGE2, check=False)
    assert p.returncode == 2 and "--teacher=PATH" in p.stderr
    shutil.copytree(d / "stage1", tmp_path / "stage1")
    run(f"--out_dir={tmp_path}/stage1", f"--teacher={d}/teacher", "--init_from=resume", "--max_iters=17",
        "--eval_interval=17")  # stage 1 resumes with train_stage1.py ...
    p = run_script("train_tokenizer.py", f"--out_dir={tmp_path}/stage1", "--init_from=resume", *STAGE2, check=False)
    assert p.returncode == 2 and "resume it with python -m two_stage.train_stage1" in p.stderr  # ... not with train_tokenizer.py
    assert not (tmp_path / "out").exists()  # nothing was started


def test_two_stages_with_the_maskgit_vqgan_teacher(tmp_path):
    """The ImageNet recipe's path: the MaskGIT-VQGAN as teacher (the tiny random-weight official fixture, f16)."""
    bin_file = official_fixture("vqgan") / "maskgit-vqgan.bin"
    args = ["--image_size=64", "--patch_size=16", "--num_latent_tokens=8", f"--teacher={bin_file}", "--max_iters=2",
            "--eval_interval=2"]
    p = run(f"--out_dir={tmp_path}/s1", *args)
    assert "proxy-code accuracy" in p.stdout
    run_script("train_tokenizer.py", f"--out_dir={tmp_path}/s2", *STAGE2, f"--teacher={bin_file}", "--max_iters=1",
               "--eval_interval=1", f"--init_from={tmp_path}/s1", "--learning_rate=0.0", "--min_lr=0.0")
    vqgan = torch.load(bin_file, weights_only=True)
    s2 = ckpt(tmp_path / "s2")
    assert torch.equal(s2["model"]["pixel_codebook"], vqgan["quantize.embedding.weight"])
    assert all(torch.equal(s2["model"]["pixel_" + k], v) for k, v in vqgan.items() if k.startswith("decoder."))
    assert load_tokenizer(tmp_path / "s2").decode(torch.randint(0, 64, (2, 8))).shape == (2, 3, 64, 64)
