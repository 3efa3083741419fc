import math
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from aids.codebook_init import init_generator_from_codebook
from conftest import official_fixture
from generator import LABEL_SMOOTHING, MaskGIT, MaskGITConfig, guidance_weight, loss, mask_schedule
from released.maskgit import config_from_official, load_released_generator

MODEL_TYPES = {"ViT": "generator", "UViT": "generator_uvit"}
GREEDY = {  # the official generate() settings recorded in expected.pt (8 steps, no Gumbel noise)
    "cfg0_constant": dict(guidance_scale=0.0, guidance_decay="constant"),
    "cfg3_linear": dict(guidance_scale=3.0, guidance_decay="linear"),
    "cfg3_linear_softmax_anneal": dict(guidance_scale=3.0, guidance_decay="linear", softmax_temperature_annealing=True),
    "cfg4_power_cosine": dict(guidance_scale=4.0, guidance_decay="power-cosine", guidance_scale_pow=2.75),
}


def tiny(model_type="ViT", **kw):
    torch.manual_seed(0)
    args = dict(codebook_size=64, num_tokens=16, num_classes=10, hidden_size=32, depth=2, heads=2, mlp_dim=64,
                model_type=model_type, randomize_temperature=0.0)
    return MaskGIT(MaskGITConfig(**{**args, **kw}))


def official(model_type):
    path = official_fixture(MODEL_TYPES[model_type])
    return path, load_released_generator(path).eval(), torch.load(path / "expected.pt", weights_only=True)


# ---------------------------------------------------------------------------------------------
# parity with the official implementation


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_logits_match_official(model_type):
    _, m, e = official(model_type)
    assert m.config.model_type == model_type
    null = torch.full_like(e["labels"], m.config.num_classes)
    with torch.no_grad():
        for labels, want in [(e["labels"], e["logits_cond"]), (null, e["logits_uncond"])]:
            got = m(e["ids"], labels)
            assert got.shape == want.shape
            assert (got - want).abs().max() <= 1e-4 * want.abs().max()


@pytest.mark.parametrize("setting", GREEDY)
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_greedy_generate_matches_official(model_type, setting):
    _, m, e = official(model_type)
    codes = m.generate(e["labels"], num_steps=8, randomize_temperature=0.0, **GREEDY[setting])
    assert torch.equal(codes, e["greedy_generate"][setting])


def test_recorded_schedules():
    _, _, e = official("ViT")
    for name, counts in e["masked_before_step"].items():  # e.g. "N32_steps8"
        n, steps = map(int, name[1:].split("_steps"))
        assert mask_schedule(n, steps) == counts, name


def test_mask_schedule():
    assert mask_schedule(32, 8) == [32, 29, 26, 24, 21, 18, 14, 10]
    assert mask_schedule(128, 16) == [128, 122, 117, 112, 107, 102, 96, 91, 85, 79, 72, 66, 58, 50, 41, 28]
    assert mask_schedule(8, 12) == [8, 7, 6, 5, 4, 3, 2, 1, 1, 1, 1, 1]  # at least one step each, one left
    assert mask_schedule(5, 1) == [5]


def test_load_names_every_problem(tmp_path):
    path, _, _ = official("ViT")
    shutil.copy(path / "config.json", tmp_path / "config.json")
    sd = load_file(path / "model.safetensors")
    del sd["model.encoder.layer.1.output.dense.bias"]
    sd["model.extra.weight"] = torch.zeros(3)
    save_file(sd, tmp_path / "model.safetensors")
    with pytest.raises(ValueError) as err:
        load_released_generator(tmp_path)
    assert "missing key blocks.1.mlp.proj.bias" in str(err.value) and "unexpected key extra.weight" in str(err.value)


# ---------------------------------------------------------------------------------------------
# config and released checkpoints


def test_config_from_official_defaults_and_sizes():
    released_s128 = {"model": {"vq_model": {"codebook_size": 4096, "num_latent_tokens": 128},
                               "generator": {"model_type": "UViT", "hidden_size": 1024, "num_hidden_layers": 20,
                                             "num_attention_heads": 16, "intermediate_size": 4096, "dropout": 0.1,
                                             "attn_drop": 0.1, "num_steps": 64, "class_label_dropout": 0.1,
                                             "image_seq_len": "${model.vq_model.num_latent_tokens}",
                                             "condition_num_classes": 1000, "randomize_temperature": 2.8,
                                             "guidance_scale": 6.9, "guidance_decay": "power-cosine"}}}
    cfg = config_from_official(released_s128)
    assert (cfg.num_tokens, cfg.depth, cfg.num_steps, cfg.guidance_decay) == (128, 20, 64, "power-cosine")
    assert cfg.guidance_scale_pow == 3.0 and cfg.softmax_temperature_annealing is False  # official defaults
    with torch.device("meta"):
        m = MaskGIT(cfg)
    assert len(m.in_blocks) == len(m.out_blocks) == 10 and m.pos_emb.shape == (129, 1024)
    assert m.tok_emb.weight.shape == (4096 + 1000 + 2, 1024) and m.lm_head.weight.shape == (4096, 1024)


def test_unknown_model_type_is_a_value_error():
    with pytest.raises(ValueError, match=r"model_type must be one of \('ViT', 'UViT'\), not 'GPT'"):
        tiny("GPT")


def test_from_pretrained_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.safetensors.*yucornetto/generator_titok"):
        load_released_generator(tmp_path)
    torch.save(tiny().state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="config.json.*yucornetto/generator_titok"):
        load_released_generator(tmp_path)


# ---------------------------------------------------------------------------------------------
# sampling


def test_out_of_range_label():
    m = tiny().eval()
    for bad in ([0, 10], [-1]):  # 10 = n is the null class: not a class to sample
        with pytest.raises(ValueError, match="class labels"):
            m.generate(torch.tensor(bad))


def test_guidance_weight_schedules():
    assert [guidance_weight(s, 4, 3.0, "linear", 0) for s in range(4)] == [0, 0.75, 1.5, 2.25]
    assert guidance_weight(2, 4, 3.0, "constant", 0) == 3.0
    w = [guidance_weight(s, 8, 4.0, "power-cosine", 2.75) for s in range(8)]
    assert w[0] == 0 and all(a < b for a, b in zip(w, w[1:])) and w[-1] < 3.0  # rises towards scale - 1
    with pytest.raises(ValueError, match="guidance_decay"):
        tiny().eval().generate(torch.tensor([1]), guidance_decay="cosine")


def record_forward_calls(m):
    calls = []
    m.register_forward_hook(lambda mod, args, out: calls.append((args[1].clone(), out.clone())))
    return calls


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_guidance_scale_zero_gives_conditional_logits(model_type):
    m = tiny(model_type).eval()
    labels = torch.tensor([1, 2, 3])
    calls = record_forward_calls(m)
    m.generate(labels, num_steps=4, guidance_scale=0.0, guidance_decay="constant")
    assert len(calls) == 4 and all(torch.equal(l, labels) for l, _ in calls)  # no null class: conditional only


def test_guidance_is_one_batched_forward():
    m = tiny().eval()
    labels = torch.tensor([1, 2, 3])
    calls = record_forward_calls(m)
    m.generate(labels, num_steps=4, guidance_scale=2.0, guidance_decay="constant")
    assert len(calls) == 4
    for l, logits in calls:
        assert torch.equal(l, torch.tensor([1, 2, 3, 10, 10, 10])) and logits.shape == (6, 16, 64)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_fixed_tokens_stay_fixed(model_type):
    m = tiny(model_type).eval()
    inputs = []  # the ids each step starts from: those the step before left
    m.register_forward_hook(lambda mod, args, out: inputs.append(args[0][:6].clone()))
    codes = m.generate(torch.arange(6), num_steps=6, randomize_temperature=5.0, guidance_scale=2.0,
                       rng=torch.Generator().manual_seed(0))
    history = inputs[1:] + [codes]  # after each of the 6 steps
    assert len(history) == 6
    C, schedule = 64, mask_schedule(16, 6)
    for step, ids in enumerate(history):
        masked = (ids == C).sum(-1)
        assert torch.all(masked == (schedule[step + 1] if step + 1 < 6 else 0))
        for later in history[step + 1:]:
            assert torch.equal(later[ids != C], ids[ids != C])
    assert 0 <= codes.min() and codes.max() < C


def test_guidance_mixes_bf16_logits_in_fp32():
    """Under bf16 autocast the forward gives bf16 logits; generate() must mix cond + w (cond - uncond) (and add the
    noise) in fp32, i.e. give what it gives when the same forward outputs arrive already cast to fp32. The U-ViT
    with noise and w = 4.5 is a case where mixing in bf16 changes codes."""
    m = tiny("UViT").eval()
    labels, settings = torch.arange(10).repeat(10), dict(num_steps=4, guidance_scale=4.5, guidance_decay="constant",
                                                         randomize_temperature=0.2)
    outputs = []
    hook = m.register_forward_hook(lambda mod, args, out: outputs.append(out))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        codes = m.generate(labels, rng=torch.Generator().manual_seed(0), **settings)
    hook.remove()
    assert len(outputs) == 4 and all(out.dtype == torch.bfloat16 for out in outputs)
    cond, uncond = outputs[0].chunk(2)
    mixed_in_bf16 = cond + (cond - uncond) * 4.5
    assert not torch.equal(mixed_in_bf16.float(), cond.float() + (cond.float() - uncond.float()) * 4.5)
    replay = iter([out.float() for out in outputs])
    m.forward = lambda ids, labels: next(replay)  # the same forward outputs, cast to fp32 before generate() sees them
    assert torch.equal(m.generate(labels, rng=torch.Generator().manual_seed(0), **settings), codes)


def test_sampling_is_deterministic_or_seeded():
    m = tiny().eval()
    labels = torch.arange(8)
    assert torch.equal(m.generate(labels, randomize_temperature=0.0), m.generate(labels, randomize_temperature=0.0))
    seeded = lambda seed: m.generate(labels, randomize_temperature=3.0, rng=torch.Generator().manual_seed(seed))
    assert torch.equal(seeded(1), seeded(1))
    assert not torch.equal(seeded(1), seeded(2))


# ---------------------------------------------------------------------------------------------
# training


def test_random_mask_follows_arccos_schedule():
    m, K, B = tiny(), 16, 20000
    codes = torch.randint(0, 64, (B, K))
    ids, mask = m.random_mask(codes, rng=torch.Generator().manual_seed(0))
    assert torch.equal(ids[mask], torch.full_like(ids[mask], 64)) and torch.equal(ids[~mask], codes[~mask])
    count = mask.sum(-1)
    assert count.min() >= 1
    # the masked fraction r = arccos(u) * 2/pi has CDF 1 - cos(pi r / 2); counts are round(K r)
    for c in range(1, K):
        expected = 1 - math.cos(math.pi * (c + 0.5) / (2 * K))
        assert abs((count <= c).float().mean().item() - expected) < 0.015, c
    assert abs(count.float().mean().item() / K - 2 / math.pi) < 0.01
    assert mask.float().mean(0).std() < 0.02  # any position, uniformly


def test_drop_labels():
    m = tiny()
    labels = torch.randint(0, 10, (20000,))
    dropped = m.drop_labels(labels, rng=torch.Generator().manual_seed(0))
    null = dropped == 10
    assert abs(null.float().mean().item() - 0.1) < 0.01 and torch.equal(dropped[~null], labels[~null])


def test_loss_on_masked_positions_only():
    logits, codes = torch.randn(2, 4, 8), torch.randint(0, 8, (2, 4))
    mask = torch.tensor([[1, 0, 0, 1], [0, 1, 0, 0]], dtype=torch.bool)
    assert LABEL_SMOOTHING == 0.1  # the paper's
    want = torch.nn.functional.cross_entropy(logits[mask], codes[mask], label_smoothing=0.1)
    assert torch.allclose(loss(logits, codes, mask), want)
    plain = torch.nn.functional.cross_entropy(logits[mask], codes[mask])
    assert torch.allclose(loss(logits, codes, mask, label_smoothing=0.0), plain)
    changed = logits.clone()
    changed[~mask] = 100.0
    assert torch.allclose(loss(changed, codes, mask), want)
    # the official recipe's variant: unmasked positions weighed by 0.1
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), codes, label_smoothing=0.1, reduction="none")
    w = mask + 0.1 * ~mask
    assert torch.allclose(loss(logits, codes, mask, unmasked_weight=0.1), (ce * w).sum() / w.sum())


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_overfit_one_batch(model_type):
    m = tiny(model_type, dropout=0.0, attn_dropout=0.0)
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 64, (8, 16), generator=g)
    ids, mask = m.random_mask(codes, rng=g)
    labels = m.drop_labels(torch.arange(8), rng=g)
    opt = m.configure_optimizers(0.01, 1e-2, (0.9, 0.96), "cpu")
    losses = []
    for _ in range(40):
        l = loss(m(ids, labels), codes, mask)
        opt.zero_grad()
        l.backward()
        opt.step()
        losses.append(l.item())
    assert losses[-1] < 0.75 * losses[0], losses[::5]


def test_weight_decay_groups():
    m = tiny("UViT")
    decayed, plain = m.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu").param_groups
    names = {id(p): n for n, p in m.named_parameters()}
    decayed = {names[id(p)] for p in decayed["params"]}
    assert "lm_head.weight" in decayed and "out_blocks.0.skip_linear.weight" in decayed
    assert not any(n.endswith("bias") or "ln" in n or "emb" in n for n in decayed)
    assert plain["weight_decay"] == 0.0 and len(decayed) + len(plain["params"]) == len(names)


def test_codebook_init_keeps_code_geometry():
    m = tiny(hidden_size=256, heads=4)
    shapes = {k: v.shape for k, v in m.state_dict().items()}
    codebook = torch.randn(64, 12, generator=torch.Generator().manual_seed(1))
    init_generator_from_codebook(m, codebook * 5.0, rng=torch.Generator().manual_seed(2))  # the scale must not matter
    assert {k: v.shape for k, v in m.state_dict().items()} == shapes
    unit = torch.nn.functional.normalize(codebook, dim=-1)
    near = (unit @ unit.T).triu(1)
    for weight in (m.tok_emb.weight[:64], m.lm_head.weight):
        assert weight.std().item() == pytest.approx(0.02, rel=0.2)  # the usual init's scale
        w = torch.nn.functional.normalize(weight, dim=-1)
        # inner products between codes carry over to their embeddings and output rows
        corr = torch.corrcoef(torch.stack([near[near != 0], (w @ w.T).triu(1)[near != 0]]))[0, 1]
        assert corr > 0.9, corr
    assert torch.equal(m.tok_emb.weight[64:], tiny(hidden_size=256, heads=4).tok_emb.weight[64:])  # mask and classes
    with pytest.raises(ValueError, match="65 codes"):
        init_generator_from_codebook(m, torch.randn(65, 12))
