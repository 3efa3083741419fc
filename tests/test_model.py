import pytest
import torch
import torch.nn.functional as F

from aids.routing import route_by_position, scatter_routes
from model import PRESETS, Attention, TiTok, TiTokConfig
from checkpoints import build_tokenizer, load_tokenizer
from quantizer import CodebookUpkeep
from two_stage.titok import TwoStageConfig, TwoStageTiTok


def tiny(**kw):
    """A micro TiTok; head_upsample and conv_out_padding build aids.SmallBudgetTiTok, as the trainer does."""
    torch.manual_seed(0)
    args = dict(image_size=32, patch_size=8, num_latent_tokens=8, codebook_size=64, **PRESETS["micro"])
    return build_tokenizer({**args, **kw})


@pytest.mark.parametrize("size", [32, 64])
def test_one_dimensional_codes_whatever_the_resolution(size):
    m = tiny(image_size=size).eval()
    x = torch.rand(3, 3, size, size)
    codes = m.encode(x)
    assert codes.shape == (3, 8) and codes.dtype == torch.long  # K codes, not a grid
    assert 0 <= codes.min() and codes.max() < 64
    y = m.decode(codes)
    assert y.shape == (3, 3, size, size)
    recon, losses = m(x)
    assert torch.allclose(recon, y, atol=1e-5)  # decode(encode(x)) is what forward reconstructs
    assert set(losses) == {"commitment", "codebook"}


def test_presets_are_the_papers():
    assert PRESETS["S"] == dict(width=512, depth=8, heads=8)
    assert PRESETS["B"] == dict(width=768, depth=12, heads=12)
    assert PRESETS["L"] == dict(width=1024, depth=24, heads=16)
    cfg = TiTokConfig(image_size=256, patch_size=16, num_latent_tokens=32, **PRESETS["L"])
    with torch.device("meta"):
        m = TiTok(cfg)
    assert m.encoder.latent_tokens.shape == (32, 1024) and m.decoder.mask_token.shape == (1, 1, 1024)
    assert m.encoder.positional_embedding.shape == (257, 1024) and m.quantizer.codebook.weight.shape == (4096, 12)


def test_single_stage_variants_encoder_and_decoder_of_their_own_sizes():
    """The released single-stage layouts: a decoder of another size than the encoder, VQ without l2 norm, a VAE."""
    x = torch.rand(2, 3, 32, 32)
    m = tiny(decoder_width=48, decoder_depth=2, decoder_heads=3, use_l2_norm=False).eval()
    assert m.encoder.blocks[0].attn.qkv.weight.shape == (96, 32) and len(m.encoder.blocks) == 1
    assert m.decoder.blocks[0].attn.qkv.weight.shape == (144, 48) and len(m.decoder.blocks) == 2
    assert m.decode(m.encode(x)).shape == x.shape
    assert tiny().config.decoder_width == PRESETS["micro"]["width"]  # unset: the encoder's
    vae = tiny(quantize_mode="vae", token_size=6).eval()
    mean = vae.encode(x)
    assert mean.shape == (2, 8, 6) and mean.dtype == torch.float32 and vae.encoder.proj_out.out_features == 12
    recon, losses = vae(x)
    assert set(losses) == {"kl"} and torch.allclose(recon, vae.decode(mean), atol=1e-5)  # eval: the mean
    assert not torch.allclose(vae.train()(x)[0], recon)  # training decodes a sample
    assert not any("codebook" in n for n, _ in vae.named_parameters())


def test_proxy_head_shape():
    m = TwoStageTiTok(TwoStageConfig(**tiny().config.__dict__, proxy_codebook_size=100)).eval()
    assert m.decode(m.encode(torch.rand(2, 3, 32, 32))).shape == (2, 100, 4, 4)


def test_encode_has_no_side_effects():
    """Usage bookkeeping and dead-code restarts are the training forward's, not encode's, in any mode."""
    m = tiny().train()
    m.quantizer.upkeep = CodebookUpkeep(64, usage_window=1, dead_code_restart=True)  # every unused code dead at once
    x = torch.rand(4, 3, 32, 32)
    before = {k: v.clone() for k, v in m.quantizer.state_dict().items()}
    m.encode(x)
    assert all(torch.equal(v, m.quantizer.state_dict()[k]) for k, v in before.items())
    assert m.quantizer.upkeep.counts.sum() == 0 and m.quantizer.upkeep.outputs == []  # nothing held for the step's end
    m(x)  # the training forward counts the codes; the trainer's end_step() then restarts the unused ones
    m.quantizer.upkeep.end_step(m.quantizer)
    assert all(not torch.equal(v, m.quantizer.state_dict()[k]) for k, v in before.items())


def test_latent_tokens_carry_the_image_only_through_codes():
    m = tiny().eval()
    x = torch.rand(2, 3, 32, 32)
    codes = m.encode(x)
    other = codes.clone()
    other[:, 3] = (other[:, 3] + 1) % 64
    assert not torch.allclose(m.decode(codes), m.decode(other))  # every token matters
    assert torch.equal(m.decode(codes), m.decode(codes.clone()))


def test_attention_matches_reference():
    torch.manual_seed(0)
    attn = Attention(32, 4)
    ref = torch.nn.MultiheadAttention(32, 4, batch_first=True)
    ref.in_proj_weight.data, ref.in_proj_bias.data = attn.qkv.weight.data, attn.qkv.bias.data
    ref.out_proj.weight.data, ref.out_proj.bias.data = attn.proj.weight.data, attn.proj.bias.data
    x = torch.randn(2, 5, 32)
    assert torch.allclose(attn(x), ref(x, x, x, need_weights=False)[0], atol=1e-5)


@pytest.mark.parametrize("routing_init,head_upsample", [(False, 1), (True, 1), (True, 4), ("scatter", 4)])
def test_overfit_one_batch(routing_init, head_upsample):
    # scatter needs more dims per head than patches: tiny's 32 for 16
    m = tiny(head_upsample=head_upsample, **(PRESETS["tiny"] if routing_init == "scatter" else {}))
    if routing_init:
        route_by_position(m, scatter=routing_init == "scatter")
    x = torch.rand(4, 3, 32, 32)
    opt = m.configure_optimizers(0.0, 3e-3, (0.9, 0.99), "cpu")
    losses = []
    for _ in range(60):
        recon, q = m(x)
        loss = F.mse_loss(recon, x) + q["commitment"] + q["codebook"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::10]


def test_weight_decay_groups():
    m = tiny()
    decay, no_decay = m.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu").param_groups
    names = {id(p): n for n, p in m.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert "encoder.blocks.0.attn.qkv.weight" in decayed and "encoder.patch_embed.weight" in decayed
    assert not decayed & {"encoder.latent_tokens", "decoder.mask_token", "quantizer.codebook.weight",
                          "encoder.blocks.0.ln_1.weight", "encoder.blocks.0.attn.qkv.bias"}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(m.parameters()))


def test_compile_and_bf16_autocast_on_cpu():
    m = tiny().eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        recon = m(x)[0]
    assert recon.shape == x.shape and torch.isfinite(recon).all()
    compiled = torch.compile(m.decoder)
    z = m.quantizer.decode(m.encode(x))
    with torch.no_grad():
        assert torch.allclose(compiled(z), m.decoder(z), atol=1e-4)


def _block0_attention(block, h, per_head=False):
    a = block.attn
    B, T, C = h.shape
    q, k, _ = a.qkv(block.ln_1(h)).view(B, T, 3, a.heads, C // a.heads).permute(2, 0, 3, 1, 4)
    attn = (q @ k.transpose(-1, -2) / (C // a.heads) ** 0.5).softmax(-1)  # B, heads, T, T
    return attn if per_head else attn.mean(1)


def _block0_inputs(m, x):
    """The encoder's and the decoder's first-block inputs (after ln_pre) for images x."""
    e, d, B = m.encoder, m.decoder, len(x)
    h = torch.cat([e.class_embedding.expand(B, -1, -1), e.patch_embed(x).flatten(2).transpose(1, 2)], 1)
    h = torch.cat([h + e.positional_embedding, (e.latent_tokens + e.latent_token_positional_embedding).expand(B, -1, -1)], 1)
    z = m.quantizer.decode(m.encode(x))
    masks = torch.cat([d.class_embedding.expand(B, -1, -1), d.mask_token.expand(B, m.config.grid_size ** 2, -1)], 1)
    return e.ln_pre(h), d.ln_pre(torch.cat([masks + d.positional_embedding,
                                             d.decoder_embed(z) + d.latent_token_positional_embedding], 1))


@pytest.mark.parametrize("K", [8, 32])  # fewer latents than the 16 patches, and more
def test_routing_init_starts_latents_reading_their_patches(K):
    m = route_by_position(tiny(num_latent_tokens=K, **PRESETS["tiny"])).eval()
    e, d, n = m.encoder, m.decoder, 16
    x = torch.rand(4, 3, 32, 32)
    patch = 1 + torch.arange(K) * n // K  # the patch each latent starts on (row 0 is the class token)
    with torch.no_grad():
        enc_in, dec_in = _block0_inputs(m, x)
        attn = _block0_attention(e.blocks[0], enc_in)
        assert attn[:, 1 + n + torch.arange(K), patch].mean() > 0.9  # encoder: latent j reads its patch
        attn = _block0_attention(d.blocks[0], dec_in)
        # per mask token that has latents: its attention on the latents that start on its patch
        own = torch.stack([attn[:, p, 1 + n:][:, patch == p].sum(-1) for p in patch.unique()], 1)
        assert own.mean() > 0.9  # decoder: a mask token reads the latents of its patch
    default = tiny(num_latent_tokens=K, **PRESETS["tiny"])  # same parameters: checkpoints interchange
    assert {k: v.shape for k, v in default.state_dict().items()} == {k: v.shape for k, v in m.state_dict().items()}


def test_checkpoints_written_before_the_two_stage_split_load(tmp_path):
    """Their model_args also name routing_init, head and the codebook upkeep's settings, their state dicts hold the
    upkeep's buffers as the quantizer's, and a stage-2 model's 2D teacher records every field of the TiTokConfig
    of then: load_tokenizer reads them, into the same parameter names."""
    torch.manual_seed(0)
    core = dict(image_size=32, patch_size=8, codebook_size=64, commitment_cost=0.25, usage_window=1000,
                dead_code_restart=False, token_size=12, **PRESETS["micro"])
    teacher = dict(core, layout="2d", num_latent_tokens=16, head="pixels", proxy_codebook_size=1024,
                   pixel_decoder=None, legacy_reshape=False, routing_init=False)
    single = dict(core, layout="1d", num_latent_tokens=8, routing_init=True)
    stage1 = dict(single, routing_init=False, head="proxy", proxy_codebook_size=64)
    stage2 = dict(stage1, pixel_decoder={"titok": teacher})
    codes = torch.randint(0, 64, (2, 8))
    for i, args in enumerate([single, stage1, stage2]):
        kept = {k: v for k, v in args.items() if k not in ("routing_init", "head", "usage_window", "dead_code_restart")}
        model = TiTok(TiTokConfig(**kept)) if i == 0 else TwoStageTiTok(TwoStageConfig(**kept))
        old = {**model.state_dict(), "quantizer.step": torch.tensor(3), "quantizer.last_used": torch.zeros(64).long()}
        torch.save({"model": old, "model_args": args}, tmp_path / f"{i}.pt")
        loaded = load_tokenizer(tmp_path / f"{i}.pt")
        assert type(loaded) is type(model)
        assert torch.equal(loaded.decode(codes), model.eval().decode(codes))


def test_checkpoints_of_the_pixel_grid_head_written_before_aids_moved_load(tmp_path):
    """The demo's and the photo recipe's checkpoints of before: model_args naming head_upsample (or its first name,
    head_stride) and conv_out_padding build aids/pixel_grid.py's SmallBudgetTiTok, the same parameter names."""
    model = tiny(head_upsample=4, conv_out_padding="replicate").eval()
    assert type(model).__name__ == "SmallBudgetTiTok" and type(model).__module__ == "aids.pixel_grid"
    args = dict(image_size=32, patch_size=8, num_latent_tokens=8, codebook_size=64, **PRESETS["micro"],
                head_stride=4, conv_out_padding="replicate", routing_init=True)
    torch.save({"model": model.state_dict(), "model_args": args}, tmp_path / "ckpt.pt")
    loaded = load_tokenizer(tmp_path)
    assert type(loaded) is type(model) and loaded.config.head_upsample == 4
    codes = torch.randint(0, 64, (2, 8))
    assert torch.equal(loaded.decode(codes), model.decode(codes))


def test_head_upsample_upsamples_a_coarse_image_and_changes_only_the_head():
    m = tiny(head_upsample=4).eval()  # 8-px patches: a 2x2 grid of colours each, upsampled 4x
    z = m.quantizer.decode(m.encode(torch.rand(2, 3, 32, 32)))
    with torch.no_grad():
        m.decoder.conv_out.weight.zero_()
        m.decoder.conv_out.weight[[0, 1, 2], [0, 1, 2], 1, 1] = 1.0  # the seam conv as the identity
        m.decoder.conv_out.bias.zero_()
        out = m.decoder(z)
        assert out.shape == (2, 3, 32, 32)
        x = m.decoder.head(m.decoder.patch_outputs(z))  # (B, g*g, 2*2*3): what the head predicts per patch
        g, q = 4, 2
        grid = x.reshape(2, g, g, q, q, 3).permute(0, 5, 1, 3, 2, 4).reshape(2, 3, g * q, g * q)
        # the image is the bilinear upsampling of that 8x8 grid: no flat squares, no free pixels
        assert torch.allclose(out, F.interpolate(grid, scale_factor=4, mode="bilinear", align_corners=False), atol=1e-6)
    shapes = {k: v.shape for k, v in tiny().state_dict().items()}
    strided = {k: v.shape for k, v in m.state_dict().items()}
    assert {k for k in shapes if shapes[k] != strided[k]} == {"decoder.head.weight", "decoder.head.bias"}
    assert strided["decoder.head.weight"] == (2 * 2 * 3, 32)
    with pytest.raises(ValueError, match="head_upsample=3 does not divide patch_size=8"):
        tiny(head_upsample=3)


@pytest.mark.parametrize("padding", ["zeros", "replicate"])
def test_conv_out_padding_replicate_keeps_a_flat_image_flat_to_its_edge(padding):
    m = tiny(head_upsample=4, conv_out_padding=padding).eval()
    with torch.no_grad():
        m.decoder.head.weight.zero_()
        m.decoder.head.bias.fill_(0.6)  # the head predicts one flat grey for every patch
        out = m.decoder(m.quantizer.decode(m.encode(torch.rand(2, 3, 32, 32))))
    centre = out[:, :, 16, 16][..., None, None]
    off = (out - centre).abs().amax((0, 1))  # (H, W): how far each pixel is from the centre's colour
    assert off[1:-1, 1:-1].max() < 1e-6  # inside, every 3x3 window sees the same grey either way
    if padding == "replicate":  # whatever the conv's weights: no border of their own
        assert off.max() < 1e-6
    else:  # zeros: the conv reads black beyond the image, so the border takes another colour
        assert off[0].min() > 1e-3 and off[:, -1].min() > 1e-3
    with pytest.raises(ValueError, match="conv_out_padding must be 'zeros' or 'replicate'"):
        tiny(conv_out_padding="reflect")


@pytest.mark.parametrize("K", [8, 12])
def test_scatter_routing_starts_each_latent_reading_patches_far_apart(K):
    m = route_by_position(tiny(num_latent_tokens=K, **PRESETS["tiny"]), scatter=True).eval()
    n, H = 16, 4
    reads, reader = scatter_routes(K, H, 4)
    assert sorted({p for r in reads for p in r}) == list(range(n))  # every patch is read
    for r in reads:  # a latent's patches: one in each quadrant of the 4x4 grid
        assert sorted((p // 4 // 2) * 2 + p % 4 // 2 for p in r) == [0, 1, 2, 3]
    with torch.no_grad():
        enc_in, dec_in = _block0_inputs(m, torch.rand(4, 3, 32, 32))
        attn = _block0_attention(m.encoder.blocks[0], enc_in, per_head=True)
        # encoder: latent j, head h reads patch reads[j][h]
        on = torch.stack([attn[:, h, 1 + n + j, 1 + reads[j][h]] for j in range(K) for h in range(H)], 1)
        assert on.mean() > 0.9 and (on > 0.5).float().mean() > 0.9
        attn = _block0_attention(m.decoder.blocks[0], dec_in, per_head=True)
        # decoder: mask token p, head h reads latent reader[p][h], one of those that read patch p
        on = torch.stack([attn[:, h, 1 + p, 1 + n + reader[p][h]] for p in range(n) for h in range(H)], 1)
        assert on.mean() > 0.9 and (on > 0.5).float().mean() > 0.9
        assert all(p in reads[reader[p][h]] for p in range(n) for h in range(H))
    default = tiny(num_latent_tokens=K, **PRESETS["tiny"])  # an init only: checkpoints interchange
    assert {k: v.shape for k, v in default.state_dict().items()} == {k: v.shape for k, v in m.state_dict().items()}


def test_ordered_tokens_decode_the_first_k_codes_for_every_k():
    """One model for every k <= K: the first k codes, the learned dropped_token in each place after; forward's keep
    is per image, and without it (evaluation) every token is read. The paper's model has no such token."""
    m = tiny(ordered_tokens=True).eval()
    x = torch.rand(3, 3, 32, 32)
    codes = m.encode(x)
    with torch.no_grad():
        decoded = [m.decode(codes[:, :k]) for k in range(1, 9)]
        assert all(y.shape == (3, 3, 32, 32) for y in decoded)
        assert torch.allclose(m(x)[0], decoded[-1], atol=1e-5)  # no keep: all K
        keep = torch.tensor([1, 5, 8])
        per_image = m(x, keep)[0]
        assert all(torch.allclose(per_image[b], decoded[k - 1][b], atol=1e-5) for b, k in enumerate(keep.tolist()))
        m.decoder.dropped_token.add_(1.0)  # what the decoder reads in the dropped places
        assert all(not torch.allclose(m.decode(codes[:, :k]), decoded[k - 1]) for k in range(1, 8))
        assert torch.equal(m.decode(codes), decoded[-1])  # with all K, none is dropped
    assert not any("dropped" in name for name in tiny().state_dict())
    with pytest.raises(ValueError, match="decodes exactly K=8"):
        tiny().decode(codes[:, :4])
    with pytest.raises(ValueError, match="decodes at most K=8"):
        m.decode(torch.cat([codes, codes], 1))
    with pytest.raises(ValueError, match="ordered_tokens drops the tail of a 1D token sequence"):
        tiny(layout="2d", num_latent_tokens=16, ordered_tokens=True)


def test_fsq_tokenizer_codes_and_its_settings():
    m = tiny(quantize_mode="fsq", fsq_levels=[4, 4, 4], token_size=3).eval()
    x = torch.rand(2, 3, 32, 32)
    codes = m.encode(x)
    assert codes.shape == (2, 8) and codes.dtype == torch.long and 0 <= codes.min() and codes.max() < 64
    recon, losses = m(x)
    assert losses == {} and torch.allclose(recon, m.decode(codes), atol=1e-5)
    assert m.encoder.proj_out.out_features == 3 and not any(k.startswith("quantizer.") for k in m.state_dict())
    for bad, words in [(dict(fsq_levels=[4, 4, 4], token_size=12), "set token_size=3 and codebook_size=64"),
                       (dict(fsq_levels=[8, 4], token_size=2), "make 32 codes of 2 dims"),
                       (dict(fsq_levels=[4, 1, 16], token_size=3), "integers >= 2"),
                       (dict(fsq_levels=None), "integers >= 2")]:
        with pytest.raises(ValueError, match=words) as e:
            tiny(quantize_mode="fsq", **bad)
        assert "\n" not in str(e.value)
