"""
losses.py against the official bytedance/1d-tokenizer losses (commit 942a96f): the fixture folder
(../shared/fixtures/losses, README.md there) holds their outputs on seeded random weights that
seeded.py redraws with numpy. Every size, seed and name is read from the fixture, so that another
draw of it (other seed, other image size) is checked by the same code.
"""
import importlib.util
import json

import pytest
import torch

import conftest
from losses import NLayerDiscriminator, ReconstructionLoss
from nets.perceptual import WEIGHTS, ConvNeXtSmall, PerceptualLoss, VGG16Features, load_weights

FIXTURE = conftest.SHARED / "fixtures" / "losses"


def close(ours, expected, rtol=1e-5):
    """Within rtol of the expected, relative to its largest entry (logit maps cross zero)."""
    expected = torch.as_tensor(expected).float()
    ours = torch.as_tensor(ours).detach().float().reshape(expected.shape)
    torch.testing.assert_close(ours, expected, rtol=rtol, atol=rtol * expected.abs().max().item())


@pytest.fixture(scope="module")
def e():
    """The official outputs (expected.pt)."""
    if not FIXTURE.is_dir():
        pytest.skip(f"loss fixture {FIXTURE} not present")
    return torch.load(FIXTURE / "expected.pt", weights_only=True)


@pytest.fixture(scope="module")
def seeded(e):
    """The weights they were computed with, redrawn by the fixture's seeded.py, by spec.json's name."""
    spec = json.loads((FIXTURE / "spec.json").read_text())
    loader = importlib.util.spec_from_file_location("seeded", FIXTURE / "seeded.py")
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    return {k: module.seeded_state_dict(spec[k], spec["seed"] + offset) for k, offset in spec["seed_offsets"].items()}


@pytest.fixture(scope="module")
def files(seeded, tmp_path_factory):
    """The seeded weights saved under the published file names, in one directory."""
    folder = tmp_path_factory.mktemp("weights")
    for kind, key in (("vgg16", "vgg16_features"), ("convnext_s", "convnext_small"), ("lpips", "lpips_lin")):
        torch.save(seeded[key], folder / WEIGHTS[kind][0])
    return folder


@pytest.fixture(scope="module")
def perceptual(e, files):
    return PerceptualLoss(e["stage2_config"]["perceptual_loss"], files, files, files)


@pytest.fixture(scope="module")
def discriminator(seeded):
    d = NLayerDiscriminator()
    d.load_state_dict(seeded["discriminator"])  # its BlurBlock kernels too: seeded like every other key
    return d


def test_lpips_and_vgg_taps(e, perceptual):
    lpips = perceptual.lpips
    with torch.no_grad():
        d = lpips(e["inputs"], e["targets"])
        taps = lpips.taps(e["inputs"])
    assert d.shape == (len(e["inputs"]), 1, 1, 1)
    close(d.flatten(), e["lpips"])
    close(torch.stack([t.mean() for t in taps]), e["vgg_relu_means"])


def test_convnext(e, perceptual):
    with torch.no_grad():
        close(perceptual.logits(e["inputs"]), e["convnext_logits"])
        close(perceptual.convnext_loss(e["inputs"], e["targets"]), e["convnext_loss"])


def test_mix(e, perceptual):
    name = e["stage2_config"]["perceptual_loss"]
    with torch.no_grad():
        loss = perceptual(e["inputs"], e["targets"])
    assert loss.shape == (len(e["inputs"]), 1, 1, 1)  # per image, as the official
    close(loss, e[name.replace("-", "_").replace(".", "_")])


def test_single_names(e, files):
    """'lpips' alone: per image; 'convnext_s' alone: a scalar, as the official."""
    lpips, convnext = PerceptualLoss("lpips", files, files), PerceptualLoss("convnext_s", convnext_weights=files)
    assert lpips.convnext is None and convnext.lpips is None
    with torch.no_grad():
        close(lpips(e["inputs"], e["targets"]).flatten(), e["lpips"])
        d = convnext(e["inputs"], e["targets"])
    assert d.shape == ()
    close(d, e["convnext_loss"])


def test_discriminator(e, discriminator):
    with torch.no_grad():
        close(discriminator(e["inputs"]), e["disc_logits_small"])
        close(discriminator(e["inputs_256"]), e["disc_logits_256"])
    k = torch.tensor([1.0, 3.0, 3.0, 1.0])  # the fixture's kernels are seeded: check the official default here
    close(NLayerDiscriminator().blocks[0][1].kernel[0, 0], torch.outer(k, k) / torch.outer(k, k).sum())


def test_stage2_steps(e, perceptual, discriminator):
    """The official steps: generator mode (our tokenizer_loss: every term, the gradient reaching the reconstruction),
    then discriminator mode against the running means as they were, then the means' update."""
    c = e["stage2_config"]
    loss = ReconstructionLoss(
        reconstruction_loss=c["reconstruction_loss"], reconstruction_weight=c["reconstruction_weight"],
        perceptual=perceptual, perceptual_weight=c["perceptual_weight"], discriminator_start=c["discriminator_start"],
        discriminator_weight=c["discriminator_weight"], discriminator_factor=c["discriminator_factor"],
        lecam_weight=c["lecam_regularization_weight"], lecam_decay=c["lecam_ema_decay"],
        quantizer_weight=c["quantizer_weight"])
    loss.train()
    assert not perceptual.training and not perceptual.lpips.lin0.training  # frozen in eval, whatever the mode
    names = {"total_loss": "total", "reconstruction_loss": "rec", "perceptual_loss": "perceptual",
             "quantizer_loss": "quantizer", "weighted_gan_loss": "gan", "discriminator_factor": "d_factor",
             "commitment_loss": "commitment", "codebook_loss": "codebook", "gan_loss": "gan_raw"}
    for s in e["stage2_steps"]:
        t = s["step"]
        assert loss.gan_on(t) == (t >= c["discriminator_start"])
        recon = (e["targets"] + 0.01 * t).clamp(0, 1).requires_grad_(True)
        bottleneck = {"commitment": s["g_commitment_loss"], "codebook": s["g_codebook_loss"]}
        total, terms = loss.tokenizer_loss(e["inputs"], recon, bottleneck, t, discriminator)
        total.backward()
        close(total, s["total"])
        close(recon.grad.norm(), s["recon_grad_norm"])
        assert terms.keys() == set(names.values())
        for theirs, ours in names.items():
            close(terms[ours], s["g_" + theirs])
        close(loss.discriminator_weight, s["g_d_weight"])
        assert all(p.grad is None and p.requires_grad for p in discriminator.parameters())

        d_total, d_terms = loss.discriminator_loss(e["inputs"], recon, t, discriminator)
        for theirs, ours in (("total", "total"), ("discriminator_loss", "total"), ("lecam_loss", "lecam"),
                             ("logits_real", "logits_real"), ("logits_fake", "logits_fake")):
            close(d_terms[ours], s["d_" + theirs])
        close(d_terms["d_hinge"], s["d_total"] - s["d_lecam_loss"], rtol=1e-4)  # the official keeps no hinge term
        assert d_total.requires_grad and not d_terms["total"].requires_grad
        loss.update_lecam(d_terms["logits_real"], d_terms["logits_fake"])
        close(loss.ema_real, s["ema_real_after"])
        close(loss.ema_fake, s["ema_fake_after"])
    assert {"ema_real", "ema_fake"} <= loss.state_dict().keys()


def test_vae_without_perceptual_or_gan():
    """perceptual_weight 0 needs no weight file; the VAE's KL enters as kl_weight * kl; no GAN before its start."""
    images, recon = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    loss = ReconstructionLoss(reconstruction_loss="l1", perceptual_weight=0.0, discriminator_start=10)
    total, terms = loss.tokenizer_loss(images, recon, {"kl": torch.tensor(3.0)}, step=0)
    close(total, (images - recon).abs().mean() + 1e-6 * 3.0)
    assert terms["perceptual"] == 0 and terms["gan"] == 0 and "quantizer" not in terms and not loss.gan_on(9)


def test_errors(tmp_path):
    """Without the fixture: a missing file names where it is published, a file of another network fails."""
    for kind, (name, published, _) in WEIGHTS.items():
        with pytest.raises(FileNotFoundError, match=name) as info:
            load_weights(VGG16Features(), tmp_path / name, kind)
        assert published in str(info.value) and "\n" not in str(info.value)
    vgg = tmp_path / WEIGHTS["vgg16"][0]
    torch.save(VGG16Features().state_dict(), vgg)
    with pytest.raises(ValueError, match=r"is not convnext_small-0c510722.pth \(torchvision's ConvNeXt") as info:
        load_weights(ConvNeXtSmall(), vgg, "convnext_s")
    first, *details = str(info.value).splitlines()
    assert first.startswith(str(vgg)) and "https://download.pytorch.org/models/convnext_small-0c510722.pth" in first
    assert "missing key features.0.0.weight (expected shape (96, 3, 4, 4))" in details[0]  # load_exact's list
    with pytest.raises(ValueError, match="lpips-convnext_s-A-B"):
        PerceptualLoss("lpips-convnext_s")
    with pytest.raises(ValueError, match="'lpips', 'convnext_s'"):
        PerceptualLoss("vgg")
    with pytest.raises(ValueError, match="no PerceptualLoss"):
        ReconstructionLoss(perceptual_weight=1.0)
