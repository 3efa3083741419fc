"""Parity with the official implementation (bytedance/1d-tokenizer) on its tiny random-weight fixtures."""
import hashlib
import json
import os
import shutil

import pytest
import torch

from conftest import official_fixture, run_script
from model import TiTok
from checkpoints import build_tokenizer, load_tokenizer
from released.titok import ReleasedTiTok, ScrambledLinear


def close(a, b, tol=1e-4):
    return (a - b).abs().max() <= tol * b.abs().max()


def test_tokenizer_matches_official():
    d = official_fixture("tokenizer")
    m = ReleasedTiTok.from_pretrained(d)
    e = torch.load(d / "expected.pt", weights_only=True)
    assert isinstance(m.encoder.proj_out, ScrambledLinear) and m.config.proxy_codebook_size == 1024 and m.config.width == 64
    with torch.no_grad():
        z = m.encoder(e["images_in"])
        z_q, codes, _ = m.quantizer(z)
        assert close(z, e["z_pre_quant"].squeeze(2).transpose(1, 2))  # theirs is B x 12 x 1 x K
        assert torch.equal(codes, e["codes"])
        assert close(z_q, e["z_quantized"].squeeze(2).transpose(1, 2))
        assert close(m.decoder(z_q), e["proxy_logits"])
        assert close(m.decode(codes), e["images_out"])
        assert torch.equal(m.encode(e["images_in"]), e["codes"])


def test_real_config_layout_and_errors(tmp_path):
    """The released configs name the ViT size and omit the pixel-decoder config and vit_* numbers."""
    d = official_fixture("tokenizer")
    cfg = json.loads((d / "config.json").read_text())
    vq = cfg["model"]["vq_model"]
    for k in ("vit_width", "vit_depth", "vit_heads", "pixel_decoder"):
        vq.pop(k)
    vq["vit_enc_model_size"] = vq["vit_dec_model_size"] = "small"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "model.safetensors").symlink_to(d / "model.safetensors")
    with pytest.raises(ValueError, match=r"shape mismatch for encoder.latent_tokens: .* \(8, 64\), model expects \(8, 512\)"):
        ReleasedTiTok.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="huggingface.co/yucornetto/tokenizer_titok_l32_imagenet"):
        ReleasedTiTok.from_pretrained(tmp_path / "missing")
    shutil.copy(d / "config.json", tmp_path / "config.json")
    assert torch.equal(load_tokenizer(tmp_path).encoder.latent_tokens, ReleasedTiTok.from_pretrained(d).encoder.latent_tokens)


def official_single_stage(name):
    d = official_fixture(name)
    return load_tokenizer(d), torch.load(d / "expected.pt", weights_only=True)


def test_single_stage_vq_matches_official():
    """VQ-8k layout (bl64/bl128/sl256): raw codes (no l2 norm), encoder and decoder of different sizes, RGB patches."""
    m, e = official_single_stage("tokenizer_vq")
    cfg = m.config
    assert type(m) is TiTok and not cfg.use_l2_norm and cfg.width != cfg.decoder_width
    with torch.no_grad():
        z = m.encoder(e["images_in"])
        z_q, codes, _ = m.quantizer.quantize(z)
        assert close(z, e["z_pre_quant"].squeeze(2).transpose(1, 2))  # theirs is B x C x 1 x K
        assert torch.equal(codes, e["codes"])
        assert close(z_q, e["z_quantized"].squeeze(2).transpose(1, 2))
        assert torch.equal(m.encode(e["images_in"]), e["codes"])
        assert close(m.decode(e["codes"]), e["images_out"])


def test_single_stage_vae_matches_official():
    """VAE layout (ll32/bl64/bl128 c16): continuous tokens; encode is the posterior mean, decode reads a latent."""
    m, e = official_single_stage("tokenizer_vae")
    theirs = lambda t: t.squeeze(2).transpose(1, 2)  # B x C x 1 x K -> B x K x C
    with torch.no_grad():
        z = m.encoder(e["images_in"])
        mean, logvar = m.quantizer.posterior(z)
        assert close(z, theirs(e["z_pre_quant"]))
        assert close(mean, theirs(e["mean"]), 1e-5) and close(logvar, theirs(e["logvar"]), 1e-5)
        assert close(m.quantizer.kl(mean, logvar), e["kl"], 1e-5)
        assert torch.equal(m.encode(e["images_in"]), mean)
        assert m.encode(e["images_in"]).shape == (len(z), m.config.num_latent_tokens, m.config.token_size)
        assert close(m.decode(mean), e["images_out"])
        # training samples the latent (mean + std * eps) and pays the KL summed over tokens, averaged over images
        latent, codes, losses = m.quantizer.train()(z)
        assert codes is None and not torch.equal(latent, mean)
        assert torch.allclose(losses["kl"], e["kl"].sum() / len(z), rtol=1e-5)


def hub_cache(tmp_path, repo, source):
    """A Hugging Face cache holding `repo` as huggingface_hub lays it out: refs/main names a snapshot whose
    files link to content-addressed blobs."""
    root = tmp_path / "hub" / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text("0123456789abcdef0123456789abcdef01234567")
    snapshot = root / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    snapshot.mkdir(parents=True)
    (root / "blobs").mkdir()
    for f in ("config.json", "model.safetensors"):
        blob = root / "blobs" / hashlib.sha256((source / f).read_bytes()).hexdigest()
        shutil.copy(source / f, blob)
        (snapshot / f).symlink_to(os.path.relpath(blob, snapshot))
    return tmp_path / "hub"


def test_repo_id_loads_from_the_hub_cache_offline(tmp_path):
    pytest.importorskip("huggingface_hub")
    d = official_fixture("tokenizer_vq")
    repo = "yucornetto/tokenizer_titok_bl64_vq8k_imagenet"
    env = {"HF_HUB_CACHE": str(hub_cache(tmp_path, repo, d)), "HF_HUB_OFFLINE": "1"}
    p = run_script("studies/reconstruct.py", f"--tokenizer={repo}", "--eval_images=8", f"--out_dir={tmp_path}/out", env=env)
    assert "codebook 512" in p.stdout and "PSNR" in p.stdout
    p = run_script("studies/reconstruct.py", "--tokenizer=yucornetto/tokenizer_titok_unknown", env=env, check=False)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "hf download yucornetto/tokenizer_titok_unknown" in p.stderr


def test_repo_id_without_huggingface_hub_is_one_line(tmp_path):
    """No huggingface_hub installed (an import that fails, as it does where the package is absent): the command."""
    code = ("import runpy, sys; sys.modules['huggingface_hub'] = None; "
            "sys.argv = ['reconstruct.py', '--tokenizer=yucornetto/tokenizer_titok_bl64_vae_c16_imagenet']; "
            "runpy.run_module('studies.reconstruct', run_name='__main__', alter_sys=True)")
    p = run_script("-c", code, check=False)
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert "huggingface_hub is not installed" in p.stderr
    assert "hf download yucornetto/tokenizer_titok_bl64_vae_c16_imagenet --local-dir tokenizer_titok_bl64_vae_c16_imagenet" in p.stderr


@pytest.mark.parametrize("name", ["tokenizer_vq", "tokenizer_vae"])
def test_reconstruct_runs_on_the_single_stage_layouts(name, tmp_path):
    d = official_fixture(name)
    p = run_script("studies/reconstruct.py", f"--tokenizer={d}", "--eval_images=8", f"--out_dir={tmp_path}")
    assert "PSNR" in p.stdout and (tmp_path / "recon_grid.png").is_file()


@pytest.mark.parametrize("name", ["tokenizer_vq", "tokenizer_vae"])
def test_export_writes_the_official_files_back(name, tmp_path):
    """load -> export: the official fixture's own model.safetensors, key for key and value for value."""
    from safetensors.torch import load_file
    from released.titok import save_released
    d = official_fixture(name)
    save_released(load_tokenizer(d), tmp_path)
    theirs, ours = load_file(str(d / "model.safetensors")), load_file(str(tmp_path / "model.safetensors"))
    assert theirs.keys() == ours.keys() and all(torch.equal(v, ours[k]) for k, v in theirs.items())
    assert load_tokenizer(tmp_path).config == load_tokenizer(d).config


def test_a_trained_checkpoint_exports_and_loads_back_exactly(tmp_path):
    """train_tokenizer.py's checkpoint (its EMA weights) -> released/export.py -> load_tokenizer: the
    same codes and images; what the official layout cannot hold is one line."""
    run_script("train_tokenizer.py", "--dataset=shapes", "--image_size=32", "--patch_size=8", "--model_size=micro",
               "--decoder_size=tiny", "--num_latent_tokens=8", "--codebook_size=64", "--use_l2_norm=False",
               "--num_train=16", "--batch_size=4", "--gradient_accumulation_steps=1", "--num_workers=0",
               "--eval_batches=1", "--max_iters=3", "--eval_interval=3", "--perceptual_weight=0",
               "--discriminator_weight=0", "--ema_decay=0.9", f"--out_dir={tmp_path}/ckpt")
    p = run_script("released/export.py", f"--checkpoint={tmp_path}/ckpt", f"--out={tmp_path}/released")
    assert "wrote" in p.stdout
    config = json.loads((tmp_path / "released" / "config.json").read_text())["model"]["vq_model"]
    assert config["is_legacy"] is False and config["use_l2_norm"] is False and config["vit_dec_width"] == 128
    a, b = load_tokenizer(tmp_path / "ckpt"), load_tokenizer(tmp_path / "released")
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(a.encode(x), b.encode(x)) and torch.equal(a.decode(a.encode(x)), b.decode(b.encode(x)))
    ckpt = torch.load(tmp_path / "ckpt" / "ckpt.pt", weights_only=True)
    assert all(torch.equal(v, ckpt["model"][k]) for k, v in a.state_dict().items())  # 'model': the EMA weights
    args = {**ckpt["model_args"], "head_upsample": 4}  # a pixel grid upsampled: no official equivalent
    torch.save({"model": build_tokenizer(args).state_dict(), "model_args": args}, tmp_path / "grid.pt")
    p = run_script("released/export.py", f"--checkpoint={tmp_path}/grid.pt", f"--out={tmp_path}/x", check=False)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "head_upsample > 1" in p.stderr
