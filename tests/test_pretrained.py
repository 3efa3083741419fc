"""Parity with the official implementation (bytedance/1d-tokenizer) on its tiny random-weight fixtures."""
import json
import shutil

import pytest
import torch

from conftest import official_fixture
from model import load_tokenizer
from pretrained import ReleasedTiTok as TiTok


def close(a, b, tol=1e-4):
    return (a - b).abs().max() <= tol * b.abs().max()


def test_tokenizer_matches_official():
    d = official_fixture("tokenizer")
    m = TiTok.from_pretrained(d)
    e = torch.load(d / "expected.pt", weights_only=True)
    assert m.config.legacy_reshape and m.config.head == "proxy" and m.config.width == 64
    with torch.no_grad():
        z = m.encoder(e["images_in"])
        z_q, codes, _, _ = m.quantizer(z)
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
        TiTok.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="huggingface.co/yucornetto/tokenizer_titok_l32_imagenet"):
        TiTok.from_pretrained(tmp_path / "missing")
    shutil.copy(d / "config.json", tmp_path / "config.json")
    assert torch.equal(load_tokenizer(tmp_path).encoder.latent_tokens, TiTok.from_pretrained(d).encoder.latent_tokens)
