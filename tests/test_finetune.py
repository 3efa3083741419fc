"""Fine-tuning a released model on other images: init_from a released-layout directory (the official code's
tiny fixtures), for the tokenizer and the generator, starts from its weights and resumes exactly."""
import torch

from checkpoints import load_tokenizer
from conftest import logged_losses, official_fixture, run_script
from released.maskgit import load_released_generator
from released.titok import ReleasedTiTok
from test_train_generator import TINY as GENERATOR, make_tokenizer
from test_train_tokenizer import run


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(v, b[k]) for k, v in a.items())


def test_a_released_tokenizer_finetunes_from_its_weights_and_resumes_exactly(tmp_path):
    released = official_fixture("tokenizer_vq")  # single-stage VQ: raw codes, a decoder of its own size, 64 px
    start = [f"--init_from={released}", "--lr_decay_iters=4", "--eval_interval=2"]
    zero = run(f"--out_dir={tmp_path}/zero", *start, "--max_iters=1", "--learning_rate=0", "--min_lr=0")
    assert "TiTok custom-8 (1d, vq)" in zero.stdout  # the released model (a 64-wide encoder), not the flags' micro
    official = ReleasedTiTok.from_pretrained(released).state_dict()
    assert same(official, load_tokenizer(tmp_path / "zero").state_dict())  # learning rate 0: the released weights
    assert torch.load(tmp_path / "zero" / "ckpt.pt", weights_only=True)["model_args"]["image_size"] == 64

    straight = run(f"--out_dir={tmp_path}/a", *start, "--max_iters=4")
    first = run(f"--out_dir={tmp_path}/b", *start, "--max_iters=2")
    second = run(f"--out_dir={tmp_path}/b", *start, "--max_iters=4", "--init_from=resume")
    assert logged_losses(first.stdout) + logged_losses(second.stdout) == logged_losses(straight.stdout)
    a, b = (torch.load(tmp_path / x / "ckpt.pt", weights_only=True) for x in "ab")
    assert same(a["model"], b["model"]) and any(not torch.equal(v, a["model"][k]) for k, v in official.items())

    # freeze=encoder: the codes stay the released model's, the decoder learns
    run(f"--out_dir={tmp_path}/frozen", *start, "--max_iters=2", "--freeze=encoder")
    frozen, x = load_tokenizer(tmp_path / "frozen"), torch.rand(3, 3, 64, 64)
    assert torch.equal(frozen.encode(x), ReleasedTiTok.from_pretrained(released).encode(x))
    assert not torch.equal(frozen.state_dict()["decoder.head.weight"], official["decoder.head.weight"])


def test_a_released_generator_finetunes_from_its_weights(tmp_path):
    released = official_fixture("generator")  # 4,096 codes, 8 tokens, 10 classes: a tokenizer and data to match
    tokenizer = make_tokenizer(tmp_path / "tok", codebook_size=4096)
    args = [*GENERATOR, f"--tokenizer={tokenizer}", f"--init_from={released}", "--eval_interval=2"]
    run_script("train_generator.py", *args, f"--out_dir={tmp_path}/zero", "--max_iters=1", "--learning_rate=0",
               "--min_lr=0", "--guidance_scale=2.0")
    ckpt = torch.load(tmp_path / "zero" / "ckpt.pt", weights_only=True)
    official = load_released_generator(released)
    assert same(official.state_dict(), ckpt["model"])  # its architecture and weights, not the flags' ...
    assert ckpt["model_args"]["hidden_size"] == 64 and ckpt["model_args"]["guidance_scale"] == 2.0  # ... and this run's sampling
    p = run_script("train_generator.py", *args, f"--out_dir={tmp_path}/a", "--max_iters=2")
    assert not same(official.state_dict(), torch.load(tmp_path / "a" / "ckpt.pt", weights_only=True)["model"])
    p = run_script("train_generator.py", *args, f"--out_dir={tmp_path}/b", "--max_iters=2",
                   f"--tokenizer={make_tokenizer(tmp_path / 'tok64')}", check=False)  # 64 codes: not the generator's
    assert p.returncode == 2 and "(codebook size, tokens, classes) = (4096, 8, 10)" in p.stderr
