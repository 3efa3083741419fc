"""bench.py: its analytic FLOP counts against hook counts of the real models, the naive baseline being
the same model, the CUDA code paths that run on CPU (the sampling loop as one compiled graph, inductor,
bf16 autocast), and the script end to end. No timing assertions: speeds are bench.py's output."""
import copy
import os
import re
import subprocess
import sys
from contextlib import contextmanager, nullcontext
from dataclasses import replace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import ROOT
from generator import MaskGIT, MaskGITConfig
from losses import NLayerDiscriminator
from model import Attention, TiTok, TiTokConfig
from quantizer import VectorQuantizer
from nets.perceptual import PerceptualLoss
from tools import bench
from two_stage.titok import TwoStageConfig, TwoStageTiTok

MICRO = bench.BENCH_PRESETS["micro"]
WORKLOADS = ["tokenizer_train", "tokenizer_recipe", "naive", "lpips", "convnext_s", "discriminator", "generator_train",
             "sample", "encode", "decode", "fid"]


@pytest.fixture(autouse=True)
def cpu(monkeypatch):
    """The globals bench.py's __main__ sets, for the CPU in float32."""
    for key, value in dict(device="cpu", device_type="cpu", ctx=nullcontext(), compile=False).items():
        monkeypatch.setattr(bench, key, value, raising=False)
    yield
    torch._dynamo.reset()


@contextmanager
def hooked_flops(*models):
    """Count, independently of bench.py, 2 x the multiply-adds run inside the block: linear and conv layers,
    attention's QK^T and AV, the quantizer's distances, the pixel decoder's soft codebook lookup."""
    count, handles = [0], []

    def add(n):
        count[0] += n

    quantize = VectorQuantizer.quantize

    def counted_quantize(self, z):  # called by encode() and by the quantizer's forward
        add(2 * z.numel() * self.codebook.num_embeddings)
        return quantize(self, z)

    for model in models:
        for m in model.modules():
            if isinstance(m, nn.Linear):
                hook = lambda m, i, o: add(2 * o.numel() * m.in_features)
            elif isinstance(m, nn.Conv2d):
                hook = lambda m, i, o: add(2 * o.numel() * m.weight[0].numel())
            elif isinstance(m, Attention):
                hook = lambda m, i, o: add(4 * i[0].numel() * i[0].shape[1])
            else:
                continue
            handles.append(m.register_forward_hook(hook))
        if isinstance(model, TwoStageTiTok) and model.config.pixel_decoder is not None:
            n = model.config.proxy_codebook_size
            handles.append(model.pixel_decoder.register_forward_pre_hook(lambda m, i, n=n: add(2 * i[0].numel() * n)))
    VectorQuantizer.quantize = counted_quantize
    try:
        with torch.no_grad():
            yield count
    finally:
        VectorQuantizer.quantize = quantize
        for h in handles:
            h.remove()


ODD = dict(image_size=48, patch_size=16, width=64, depth=2, heads=4, num_latent_tokens=5, token_size=6, codebook_size=100,
           proxy_codebook_size=50,
           pixel_decoder=dict(hidden_channels=32, channel_mult=(1, 2, 2, 1, 4), num_res_blocks=2, z_channels=16))


@pytest.mark.parametrize("cfg", [TiTokConfig(**MICRO["tokenizer"]),  # pixel head
                                 TwoStageConfig(**MICRO["tokenizer"], pixel_decoder=MICRO["pixel_decoder"]),
                                 TwoStageConfig(**ODD)], ids=["pixels", "released", "odd"])
def test_titok_flops_equal_hook_counts(cfg):
    tok = (TwoStageTiTok if isinstance(cfg, TwoStageConfig) else TiTok)(cfg).eval()
    images = torch.rand(3, 3, cfg.image_size, cfg.image_size)
    with hooked_flops(tok) as encode:
        codes = tok.encode(images)
    with hooked_flops(tok) as decode:
        tok.decode(codes)
    assert bench.titok_flops(cfg) == (encode[0] / 3, decode[0] / 3)


@pytest.mark.parametrize("model_type", ["ViT", "UViT"])
def test_maskgit_flops_equal_hook_counts(model_type):
    cfg = MaskGITConfig(codebook_size=100, num_tokens=5, num_classes=7, hidden_size=32, depth=3, heads=2, mlp_dim=48,
                        model_type=model_type)
    gen = MaskGIT(cfg).eval()
    with hooked_flops(gen) as count:
        gen(torch.randint(0, 101, (3, 5)), torch.tensor([0, 3, 7]))
    assert bench.maskgit_flops(cfg) == count[0] / 3


def test_flops_at_the_papers_sizes():
    """L-32 on the meta device (no memory, no time): the formulas against hooks, and against nanoGPT's
    rule of thumb, 2 x weights x tokens, which attention tops up by T / 6w."""
    spec = bench.BENCH_PRESETS["L-32"]
    cfg = TwoStageConfig(**spec["tokenizer"], pixel_decoder=spec["pixel_decoder"])
    with torch.device("meta"):
        tok, gen = TwoStageTiTok(cfg).eval(), MaskGIT(MaskGITConfig(**spec["generator"])).eval()
        with hooked_flops(tok) as encode:  # the quantizer is left out: its autocast guard has no meta device
            tok.encoder(torch.zeros(1, 3, 256, 256))
        with hooked_flops(tok) as decode:
            tok.decode(torch.zeros(1, 32, dtype=torch.long))
        with hooked_flops(gen) as generate:
            gen(torch.zeros(1, 32, dtype=torch.long), torch.zeros(1, dtype=torch.long))
    quantizer = 2 * 32 * cfg.token_size * cfg.codebook_size
    assert bench.titok_flops(cfg) == (encode[0] + quantizer, decode[0])
    assert bench.maskgit_flops(gen.config) == generate[0]
    weights = sum(m.weight.numel() for m in gen.modules() if isinstance(m, nn.Linear))
    assert bench.maskgit_flops(gen.config) == pytest.approx(2 * weights * 33, rel=0.02)
    weights = sum(m.weight.numel() for m in tok.encoder.modules() if isinstance(m, nn.Linear))
    assert bench.titok_flops(cfg)[0] == pytest.approx(2 * weights * 289 * (1 + 289 / 6144), rel=0.02)


def test_inception_flops():
    assert bench.inception_flops() == pytest.approx(2 * 5.713e9, rel=0.005)  # torchvision's 5.71 GMACs at 299


def test_sample_flops_are_what_sampling_runs():
    """Per sample: a generator forward per step, two where guidance is on (the linear ramp leaves step 0
    unguided), then decoding; counted by hooks over an actual sampling run."""
    gen = MaskGIT(MaskGITConfig(**MICRO["generator"], num_steps=8, guidance_scale=4.5, guidance_decay="linear")).eval()
    tok = bench.tokenizer(MICRO, released=True).eval()
    for cfg in (gen.config, replace(gen.config, guidance_decay="constant"), replace(gen.config, guidance_scale=0.0)):
        gen.config = cfg
        with hooked_flops(gen, tok) as count:
            bench.sampler(gen, tok)(torch.tensor([1, 2, 3, 4]))
        assert bench.sample_flops(cfg, tok.config) == count[0] / 4
    one, decode = bench.maskgit_flops(cfg), bench.titok_flops(tok.config)[1]
    assert bench.sample_flops(gen.config, tok.config) == 8 * one + decode
    assert bench.sample_flops(replace(cfg, guidance_scale=4.5), tok.config) == 15 * one + decode


@contextmanager
def autograd_flops(*models):
    """Count, independently of bench.py, what a training step runs in the models' Conv2d and Linear layers: 2 x the
    multiply-adds of each forward, once more if autograd will compute its input's gradient, once more if its weights'
    (each as costly as the forward). Frozen weights (requires_grad False) get no weight gradient."""
    count, handles = [0], []

    def hook(m, inputs, out):
        passes = 1 + inputs[0].requires_grad + m.weight.requires_grad
        count[0] += passes * 2 * out.numel() * m.weight[0].numel()

    for model in models:
        handles += [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        yield count
    finally:
        for h in handles:
            h.remove()


@pytest.fixture
def built(monkeypatch):
    """The perceptual losses, discriminators and tokenizers a workload builds, in order."""
    made = []
    for name, cls in (("PerceptualLoss", PerceptualLoss), ("NLayerDiscriminator", NLayerDiscriminator),
                      ("tokenizer", bench.tokenizer)):
        monkeypatch.setattr(bench, name, lambda *a, cls=cls, **kw: made.append(cls(*a, **kw)) or made[-1])
    return made


@pytest.mark.parametrize("term", ["lpips", "discriminator"])
def test_loss_term_flops_are_what_autograd_runs(term, built):
    """A perceptual net: forward on image and reconstruction, and the reconstruction's gradient, 3x a forward (its
    frozen weights get no gradient). The GAN: 8x, bar the discriminator's first layer, whose input (detached images)
    needs no gradient in its own step."""
    step, _, flops, _ = bench.bench_loss_term(MICRO, 2, term)
    with autograd_flops(*built) as count:
        step()
    assert flops == {"fp32": (3 if term == "lpips" else 8) * bench.loss_term_flops(term, 32)}
    assert flops["fp32"] == pytest.approx(count[0] / 2, rel=0.03 if term == "discriminator" else 1e-3)


def test_tokenizer_recipe_runs_every_term_and_both_steps(built):
    step, _, flops, _ = bench.bench_tokenizer_recipe(MICRO, 2)
    tok, disc, perceptual = built[:3]  # then those the FLOP count builds on the meta device
    assert perceptual.lpips is not None and perceptual.convnext is not None and perceptual.mix == (1.0, 0.1)
    before = [copy.deepcopy(m.state_dict()) for m in (tok, disc)]
    with autograd_flops(perceptual, disc) as count:
        step()
    for m, state in zip((tok, disc), before):  # both optimizers stepped
        assert all(not torch.equal(p, state[k]) for k, p in m.named_parameters() if k != "quantizer.codebook.weight"), m
    assert all(p.grad is None for p in perceptual.parameters())
    assert flops == {"autocast": 3 * sum(bench.titok_flops(tok.config)), "fp32": bench.recipe_loss_flops(32)}
    assert flops["fp32"] == pytest.approx(count[0] / 2, rel=0.03)


@pytest.mark.parametrize("workload", ["lpips", "convnext_s", "discriminator", "tokenizer_recipe"])
def test_loss_networks_run_and_are_booked_in_fp32_under_bf16(workload, built, monkeypatch):
    """Under the trainer's bf16 autocast, as train_tokenizer.py calls the loss: the tokenizer's layers in bf16, the loss
    networks' in fp32 (ReconstructionLoss turns autocast off, as the official code does); the FLOPs are booked so,
    against the bf16 and the TF32 peak."""
    monkeypatch.setattr(bench, "ctx", torch.autocast("cpu", dtype=torch.bfloat16))
    if workload == "tokenizer_recipe":
        step, _, flops, _ = bench.bench_tokenizer_recipe(MICRO, 2)
    else:
        step, _, flops, _ = bench.bench_loss_term(MICRO, 2, workload)
    dtypes, handles = {}, []
    for model in built:
        kind = "tokenizer" if isinstance(model, TiTok) else "loss"
        handles += [m.register_forward_hook(lambda m, i, o, kind=kind: dtypes.setdefault(kind, set()).add(o.dtype))
                    for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    step()
    for h in handles:
        h.remove()
    assert dtypes["loss"] == {torch.float32}
    assert set(flops) == ({"autocast", "fp32"} if workload == "tokenizer_recipe" else {"fp32"})
    if workload == "tokenizer_recipe":
        assert dtypes["tokenizer"] == {torch.bfloat16}
    assert bench.mfu(1, flops, (2.0, 1.0), "bfloat16") == flops.get("autocast", 0) / 2 + flops["fp32"]


def test_peaks_per_device_name_and_precision():
    """torch.cuda.get_device_name's names; dense (bf16, tf32) peaks: NVL and PCIe parts are not the SXM ones."""
    assert bench.peak_flops("NVIDIA H100 80GB HBM3") == bench.peak_flops("NVIDIA H200") == (989e12, 495e12)
    assert bench.peak_flops("NVIDIA H100 NVL") == bench.peak_flops("NVIDIA H200 NVL") == (835e12, 418e12)
    assert bench.peak_flops("NVIDIA H100 PCIe") == (756e12, 378e12)
    assert bench.peak_flops("NVIDIA A100-SXM4-80GB") == (312e12, 156e12)
    assert bench.peak_flops("NVIDIA GeForce RTX 4090") is None
    # what runs under autocast against the peak of the dtype, what runs in fp32 against the TF32 peak
    flops, peaks = {"autocast": 4e12, "fp32": 1e12}, (800e12, 400e12)
    assert bench.mfu(10, flops, peaks, "bfloat16") == pytest.approx(10 * (4 / 800 + 1 / 400))
    assert bench.mfu(10, flops, peaks, "float32") == pytest.approx(10 * 5 / 400)


def test_naive_tokenizer_is_the_same_model():
    torch.manual_seed(0)
    model = bench.tokenizer(dict(MICRO, tokenizer=dict(MICRO["tokenizer"], depth=2)), released=False)
    naive = bench.naive_tokenizer(model)
    assert all(isinstance(b, bench.NaiveBlock) for b in [*naive.encoder.blocks, *naive.decoder.blocks])
    assert sum(p.numel() for p in naive.parameters()) == sum(p.numel() for p in model.parameters())
    images = torch.rand(2, 3, 32, 32)
    (ours, *_), (theirs, *_) = model(images), naive(images)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-4)
    ours.square().mean().backward()
    theirs.square().mean().backward()
    torch.testing.assert_close(naive.encoder.patch_embed.weight.grad, model.encoder.patch_embed.weight.grad,
                               atol=1e-6, rtol=1e-3)
    torch.testing.assert_close(naive.decoder.blocks[1].attn.in_proj_weight.grad,
                               model.decoder.blocks[1].attn.qkv.weight.grad, atol=1e-6, rtol=1e-3)


def test_sampling_loop_is_one_graph_with_cfg_batched():
    """What torch.compile sees of bench.sampler: every step's generator forward in one graph (no graph break
    in the loop, so no host-device sync either), with cond and uncond as one batch on the guided steps."""
    gen = MaskGIT(MaskGITConfig(**MICRO["generator"], num_steps=8, guidance_scale=4.5, guidance_decay="linear")).eval()
    tok = bench.tokenizer(MICRO, released=True).eval()
    explained = torch._dynamo.explain(bench.sampler(gen, tok))(torch.tensor([1, 2, 3]))
    per_graph = [[n.meta["example_value"].shape[0] for n in g.graph.nodes if n.target is F.embedding
                  and n.meta["example_value"].shape[1:] == (gen.config.num_tokens + 1, gen.config.hidden_size)]
                 for g in explained.graphs]
    assert [batches for batches in per_graph if batches] == [[3] + [6] * 7]


def test_compiled_generator_matches_eager_on_cpu():
    """The inductor path of bench.py's compile=True, on one transformer block: a cold compile on CPU is
    ~1 s of g++ per kernel, so this is the slowest test here."""
    torch.manual_seed(0)
    gen = MaskGIT(MaskGITConfig(**dict(MICRO["generator"], depth=1))).eval()
    ids, labels = torch.randint(0, 65, (2, 8)), torch.tensor([1, 10])
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(gen)(ids, labels), gen(ids, labels), atol=1e-5, rtol=1e-4)


def run(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "tools.bench", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def test_bench_runs_every_workload_in_bf16_on_cpu():
    p = run("--preset=micro", "--warmup_iters=1", "--bench_iters=1", "--repeats=1", "--dtype=bfloat16")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "bfloat16" in p.stdout.splitlines()[0]
    for name in WORKLOADS:
        line = re.search(rf"^{name} +([\d.]+) (\w+)/s +\| +([\d.e+-]+) GFLOP/(\w+) .*\| ([\d.e+-]+) TFLOP/s "
                         r"\| warm-up [\d.]+ s$", p.stdout, re.M)
        assert line, f"no line for {name}:\n{p.stdout}"
        assert float(line[1]) > 0 and float(line[3]) > 0 and float(line[5]) > 0 and line[2] == line[4]
    ratio = re.search(r"^ours/naive speed ratio ([\d.]+)", p.stdout, re.M)
    assert ratio and float(ratio[1]) > 0, p.stdout


def test_bench_rejects_unknown_presets_and_workloads():
    p = run("--preset=XL-16", "--workloads=sample,train")
    assert p.returncode != 0 and "error: preset must be one of" in p.stderr and "'sample,train'" in p.stderr, p.stderr
