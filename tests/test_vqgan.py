import json

import pytest
import torch

from conftest import official_fixture
from checkpoints import load_exact, read_state_dict
from two_stage.vqgan import RELEASED_FILE, Decoder, VQGAN, VQGANConfig


def close(a, b, rel=1e-4):
    return (a - b).abs().max() <= rel * b.abs().max()


def test_matches_official_encode_and_decode():
    path = official_fixture("vqgan")
    expected = torch.load(path / "expected.pt", weights_only=True)
    m = VQGAN.from_pretrained(path)  # a directory: finds maskgit-vqgan.bin and config.json
    assert m.config.hidden_channels == 32 and m.codebook_size == 1024 and m.downsample_factor == 16
    codes = m.encode(expected["images_in"])
    assert torch.equal(codes, expected["codes"])  # (B, 16) raster order, images fed in [0, 1]
    with torch.no_grad():
        assert close(m.decode(codes), expected["images_out"])


def test_decoder_is_titok_pixel_decoder():
    path = official_fixture("tokenizer")
    cfg = VQGANConfig.from_dict(json.loads((path / "config.json").read_text())["model"]["vq_model"]["pixel_decoder"])
    sd = read_state_dict(path / "model.safetensors")
    decoder = Decoder(cfg).eval()
    load_exact(decoder, {k[len("pixel_decoder."):]: v for k, v in sd.items() if k.startswith("pixel_decoder.")})
    expected = torch.load(path / "expected.pt", weights_only=True)
    # stage 2: softmax over the proxy logits, a soft lookup of the VQGAN codebook, then the decoder
    z = torch.einsum("bnhw,nd->bdhw", expected["proxy_logits"].softmax(1), sd["pixel_quantize.embedding.weight"])
    with torch.no_grad():
        assert close(decoder(z), expected["images_out"])


def test_missing_file_names_it_and_where_it_is_published(tmp_path):
    with pytest.raises(FileNotFoundError, match=RELEASED_FILE) as e:
        VQGAN.from_pretrained(tmp_path)
    assert "huggingface.co/fun-research/TiTok" in str(e.value)
    with pytest.raises(FileNotFoundError, match="nope.bin"):
        VQGAN.from_pretrained(tmp_path / "nope.bin")


def test_wrong_shape_names_the_key(tmp_path):
    cfg = VQGANConfig(hidden_channels=32, channel_mult=(1, 2), num_res_blocks=1, z_channels=8, num_embeddings=16)
    sd = VQGAN(cfg).state_dict()
    sd["quantize.embedding.weight"] = torch.zeros(16, 9)  # the official name, with a wrong width
    del sd["codebook"]
    torch.save(sd, tmp_path / RELEASED_FILE)
    with pytest.raises(ValueError, match=r"codebook: .* \(16, 9\), model expects \(16, 8\)"):
        VQGAN.from_pretrained(tmp_path, config=cfg)


def test_config_from_official_dict():
    d = dict(channel_mult=[1, 2], num_resolutions=2, resolution=64, dropout=0.0, hidden_channels=32)
    assert VQGANConfig.from_dict(d) == VQGANConfig(hidden_channels=32, channel_mult=(1, 2))
    with pytest.raises(ValueError, match="num_resolutions"):
        VQGANConfig.from_dict({**d, "num_resolutions": 3})
    with pytest.raises(ValueError, match="hidden_chanels"):
        VQGANConfig.from_dict({"hidden_chanels": 32})


def test_released_architecture_shapes():
    with torch.device("meta"):
        m = VQGAN()
    assert m.codebook.shape == (1024, 256) and m.downsample_factor == 16
    assert m.encoder.conv_out.weight.shape == (256, 512, 1, 1) and m.decoder.conv_in.weight.shape == (512, 256, 3, 3)
    assert m.decoder.up[4].block[0].conv1.weight.shape == (512, 512, 3, 3) and not hasattr(m.decoder.up[0], "upsample_conv")


def test_encode_decode_shapes_small_config():
    torch.manual_seed(0)
    cfg = VQGANConfig(hidden_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, z_channels=8, num_embeddings=16)
    m = VQGAN(cfg).eval()
    m.codebook.data.normal_()
    codes = m.encode(torch.rand(2, 3, 32, 48))
    assert codes.shape == (2, 8 * 12) and codes.dtype == torch.long and 0 <= codes.min() and codes.max() < 16
    with torch.no_grad():
        assert m.decode(codes.view(2, 8, 12)).shape == (2, 3, 32, 48)
        assert m.decode(codes[:, :64]).shape == (2, 3, 32, 32)  # (B, g*g) is read as a square grid


def test_encode_is_fp32_under_bf16_autocast():
    """Stage 1's targets: the same codes under bf16 autocast as in fp32 (a 1,024-code book, where bf16's rounding
    of the encoder and the distances moves some codes)."""
    torch.manual_seed(0)
    cfg = VQGANConfig(hidden_channels=32, channel_mult=(1, 2), num_res_blocks=1, z_channels=8, num_embeddings=1024)
    m = VQGAN(cfg).eval()
    m.codebook.data.normal_()
    images = torch.rand(2, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        codes = m.encode(images)
    assert torch.equal(codes, m.encode(images))
