"""
Throughput of TiTok's workloads on the current device, one line each: tokenizer training (img/s), the
same step with textbook blocks (naive), the whole step of the official single-stage recipe (tokenizer_recipe:
every loss term and the discriminator's step, random weights), what each term of that loss adds to a
tokenizer step (lpips, convnext_s, discriminator; img/s, random weights), generator training (tokens/s),
sampling end to end (samples/s: 8 MaskGIT steps with classifier-free guidance, then decoding to uint8
pixels), tokenizer encode and decode (img/s) and FID features (img/s); with the model FLOPs per item, the
seconds of the untimed warm-up (compilation in it) and, on CUDA, the peak memory and the MFU: the FLOPs run under
autocast against the peak of --dtype, those the code runs in fp32 against the TF32 peak: the loss networks
(ReconstructionLoss turns autocast off around them, as the official code does) and FID's Inception (features()
turns TF32 off too, so its MFU reads low).

  python -m tools.bench                                  # L-32 on CUDA, the tiny CPU preset elsewhere
  python -m tools.bench --preset=B-64 --workloads=sample,decode --batch_size=512
  python -m tools.bench --preset=micro --compile=True --dtype=bfloat16   # the CUDA code paths, on CPU
  python -m tools.bench --workloads=tokenizer_train,lpips,convnext_s,discriminator   # the cost of each loss term
  python -m tools.bench --preset=B-64 --workloads=tokenizer_recipe    # a whole step of the official single-stage recipe
"""
import copy
import itertools
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from configurator import fail, script_config
from fid import InceptionV3, features
from generator import MaskGIT, MaskGITConfig, guidance_weight, loss
from losses import NLayerDiscriminator, ReconstructionLoss
from model import PRESETS, TiTok, TiTokConfig
from nets.perceptual import ConvNeXtSmall, PerceptualLoss, VGG16Features
from quantizer import CodebookUpkeep
from training import setup, update_ema
from two_stage.titok import TwoStageConfig, TwoStageTiTok
from two_stage.vqgan import VQGANConfig

# -----------------------------------------------------------------------------
preset = "L-32" if torch.cuda.is_available() else "tiny"  # 'L-32', 'B-64', 'S-128' (the paper's), 'tiny', 'micro'
workloads = ("tokenizer_train,tokenizer_recipe,naive,lpips,convnext_s,discriminator,generator_train,sample,encode,"
             "decode,fid")
batch_size = 0  # > 0: this batch size for every workload instead of the preset's
warmup_iters = 3  # untimed: compilation, autotuning, the optimizer's first step
bench_iters = 5  # iterations per timed window
repeats = 2  # timed windows per workload; the fastest counts (the machine may be shared)
device = "auto"  # 'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1', ...
dtype = "auto"  # 'auto' (bfloat16 on CUDA, float32 on CPU), 'float32', 'bfloat16'
compile = torch.cuda.is_available()  # torch.compile; on CPU compiling costs more than it saves at these sizes
channels_last = True  # the convolutional pixel decoder in channels-last layout (tensor cores, oneDNN)
seed = 0
# -----------------------------------------------------------------------------
if __name__ == "__main__":  # importable by the tests without reading their argv
    script_config(globals())
# -----------------------------------------------------------------------------

# Tokenizer training is train_tokenizer.py's (pixel head). Encode, decode and sampling use the released
# layout: proxy head + MaskGIT-VQGAN pixel decoder (pixel_decoder={}: VQGANConfig defaults). The paper's
# L-32 generator (MaskGITConfig defaults: 768 wide, 24 deep, codebook 4096, 1000 classes) serves all
# three paper presets with their K; the released S-128 generator is a U-ViT, hence its model_type.


def _paper(size, K, **generator):
    return dict(tokenizer=dict(PRESETS[size], num_latent_tokens=K), pixel_decoder={},
                generator=dict(num_tokens=K, **generator),
                batch=dict(tokenizer_train=32, generator_train=512, sample=256, encode=256, decode=256, fid=256))


BENCH_PRESETS = {
    "L-32": _paper("L", 32), "B-64": _paper("B", 64), "S-128": _paper("S", 128, model_type="UViT"),
    "tiny": dict(  # the CPU demo's models (config/shapes_*.py): pixel head, no pixel decoder
        tokenizer=dict(PRESETS["tiny"], image_size=64, patch_size=8, num_latent_tokens=32, codebook_size=1024),
        pixel_decoder=None, generator=dict(codebook_size=1024, num_tokens=32, num_classes=10, hidden_size=192, depth=4,
                                           heads=4, mlp_dim=768),
        batch=dict(tokenizer_train=32, generator_train=64, sample=32, encode=64, decode=64, fid=4)),
    "micro": dict(  # the smallest of everything, the released layout and the U-ViT included: the tests
        tokenizer=dict(PRESETS["micro"], image_size=32, patch_size=8, num_latent_tokens=8, codebook_size=64),
        pixel_decoder=dict(hidden_channels=32, channel_mult=(1, 1, 1, 1), num_res_blocks=1, z_channels=32),
        generator=dict(codebook_size=64, num_tokens=8, num_classes=10, hidden_size=32, depth=2, heads=2, mlp_dim=128,
                       model_type="UViT"),
        batch=dict(tokenizer_train=2, generator_train=2, sample=2, encode=2, decode=2, fid=1)),
}
# dense tensor-core peaks per GPU, (bf16 or fp16, tf32): NVIDIA's datasheet figures without sparsity (half the
# headline ones). The first name contained in torch.cuda.get_device_name counts: NVL and PCIe before the SXM parts.
PEAK_FLOPS = {"H100 NVL": (835e12, 418e12), "H200 NVL": (835e12, 418e12), "H100 PCIe": (756e12, 378e12),
              "H100": (989e12, 495e12), "H200": (989e12, 495e12), "A100": (312e12, 156e12)}


def peak_flops(device_name):
    """-> (bf16, tf32) dense peak FLOP/s of the GPU named `device_name`, or None for one not in PEAK_FLOPS."""
    return next((v for k, v in PEAK_FLOPS.items() if k in device_name), None)


def mfu(rate, flops, peaks, dtype):
    """Model FLOPs utilisation at `rate` items/s: the time the FLOPs per item would take at the peaks, per second.
    flops {"autocast": FLOPs run at `dtype`, "fp32": FLOPs run in fp32}; fp32 matmuls run as TF32 (training.setup)."""
    low, tf32 = peaks
    peak = {"autocast": tf32 if dtype == "float32" else low, "fp32": tf32}
    return rate * sum(f / peak[part] for part, f in flops.items())


# ----------------------------------------------------------------------------------------------
# Model FLOPs per item, forward: 2 per multiply-add of the matmuls and convolutions (norms, activations,
# softmax not counted, as nanoGPT's estimate_mfu). Training counts 3x forward: a matmul's forward, its gradient
# with respect to the input and that with respect to the weights each cost the same. A frozen network that passes
# gradients to its input (the perceptual nets, the discriminator in the adversarial term) skips the last: 2x.


def block_flops(T, width, hidden):
    """A transformer block on T tokens: 2 x weights x tokens, plus attention's QK^T and AV (2 x 2 x T^2 x width)."""
    return 2 * T * (4 * width * width + 2 * width * hidden) + 4 * T * T * width


def conv_flops(cin, cout, k, pixels):
    return 2 * cin * cout * k * k * pixels


def titok_flops(cfg):
    """-> (encode, decode) FLOPs per image of a TiTok; decode includes the pixel decoder when there is one."""
    w, wd, g2, K, D, p = cfg.width, cfg.decoder_width, cfg.grid_size ** 2, cfg.num_latent_tokens, cfg.token_size, cfg.patch_size
    T = 1 + g2 + K  # class token, patches (mask tokens), latent tokens
    vae = cfg.quantize_mode == "vae"  # no distances to a codebook; the encoder gives a mean and a log-variance
    encode = (2 * g2 * 3 * p * p * w + cfg.depth * block_flops(T, w, 4 * w) + 2 * K * w * D * (2 if vae else 1)
              + (0 if vae else 2 * K * D * cfg.codebook_size))  # + the quantizer's distances
    decode = 2 * K * D * wd + cfg.decoder_depth * block_flops(T, wd, 4 * wd)
    if not isinstance(cfg, TwoStageConfig):  # the pixel head
        return encode, decode + 2 * g2 * wd * 3 * p * p + conv_flops(3, 3, 3, cfg.image_size ** 2)
    decode += 2 * g2 * (wd * 2 * wd + 2 * wd * cfg.proxy_codebook_size)  # the proxy head
    if cfg.pixel_decoder is not None:  # softmax(logits) . codebook, then the convolutions
        vq = VQGANConfig.from_dict(cfg.pixel_decoder)
        decode += 2 * g2 * cfg.proxy_codebook_size * vq.z_channels + pixel_decoder_flops(vq, g2)
    return encode, decode


def pixel_decoder_flops(vq, pixels):
    """vqgan.Decoder on a latent of `pixels` positions, resolution by resolution."""
    widths, n = [vq.hidden_channels * m for m in vq.channel_mult], len(vq.channel_mult)
    resnet = lambda cin, cout, px: (conv_flops(cin, cout, 3, px) + conv_flops(cout, cout, 3, px)
                                    + (conv_flops(cout, cout, 1, px) if cin != cout else 0))
    flops = conv_flops(vq.z_channels, widths[-1], 3, pixels) + vq.num_res_blocks * resnet(widths[-1], widths[-1], pixels)
    for i in reversed(range(n)):  # coarsest first, as Decoder.forward
        for j in range(vq.num_res_blocks):
            flops += resnet(widths[min(i + 1, n - 1)] if j == 0 else widths[i], widths[i], pixels)
        if i > 0:  # upsample x2, then a conv
            pixels *= 4
            flops += conv_flops(widths[i], widths[i], 3, pixels)
    return flops + conv_flops(widths[0], vq.num_channels, 3, pixels)


def maskgit_flops(cfg):
    """A MaskGIT forward on one sequence: the class token and K image tokens in, logits for the K out."""
    H, T = cfg.hidden_size, cfg.num_tokens + 1
    if cfg.model_type == "ViT":
        body = cfg.depth * block_flops(T, H, cfg.mlp_dim)
    else:  # U-ViT: depth//2 in, one mid and depth//2 out blocks; an out block first projects its long skip 2H -> H
        half = cfg.depth // 2
        body = (2 * half + 1) * block_flops(T, H, cfg.mlp_dim) + half * 2 * T * 2 * H * H
    return body + 2 * cfg.num_tokens * H * cfg.codebook_size


def sample_flops(gen_cfg, tok_cfg):
    """One sample: a MaskGIT forward per step (two where guidance is on: cond and uncond), then decoding."""
    passes = sum(1 + (guidance_weight(s, gen_cfg.num_steps, gen_cfg.guidance_scale, gen_cfg.guidance_decay,
                                      gen_cfg.guidance_scale_pow) != 0) for s in range(gen_cfg.num_steps))
    return passes * maskgit_flops(gen_cfg) + titok_flops(tok_cfg)[1]


def count_flops(model, *inputs):
    """2 x the multiply-adds of every Conv2d and Linear in one forward, per item, counted by hooks."""
    total = 0

    def hook(m, inp, out):
        nonlocal total
        fan_in = m.in_channels // m.groups * math.prod(m.kernel_size) if isinstance(m, nn.Conv2d) else m.in_features
        total += 2 * out.numel() * fan_in

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(*inputs)
    for h in handles:
        h.remove()
    return total // inputs[0].shape[0]


def inception_flops():
    """The FID Inception-v3 at 299x299 (11.4 GFLOPs), counted on the meta device: no memory, no time."""
    with torch.device("meta"):
        return count_flops(InceptionV3().eval(), torch.zeros(1, 3, 299, 299))


def loss_term_flops(term, size):
    """A forward per image of the network of one loss term on size x size images: LPIPS' VGG16 (at the images'
    size), ConvNeXt-S (resized to 224) or the patch-GAN discriminator; counted on the meta device."""
    with torch.device("meta"):
        network = dict(lpips=VGG16Features, convnext_s=ConvNeXtSmall, discriminator=NLayerDiscriminator)[term]()
        return count_flops(network, torch.zeros(1, 3, *(2 * [224 if term == "convnext_s" else size])))


def recipe_loss_flops(size):
    """What the single-stage loss adds to a tokenizer step per image, all in fp32: each perceptual net (LPIPS and
    ConvNeXt-S) on image and reconstruction, then back to the reconstruction (3 forwards); the adversarial term,
    forward and back to the reconstruction through the frozen discriminator (2); the discriminator's step, forward
    on both images and a full backward (2 + 4)."""
    return 3 * (loss_term_flops("lpips", size) + loss_term_flops("convnext_s", size)) + 8 * loss_term_flops(
        "discriminator", size)

# ----------------------------------------------------------------------------------------------
# The naive baseline: our tokenizer with its blocks written the textbook way


class NaiveBlock(nn.Module):
    """Our Block, same weights and function: nn.MultiheadAttention on sequence-first (T, B, C) tensors
    (it forms the attention matrix), LayerNorm and GELU written out op by op."""

    def __init__(self, block):
        super().__init__()
        self.ln_1, self.ln_2 = copy.deepcopy(block.ln_1), copy.deepcopy(block.ln_2)  # their parameters only
        self.attn = nn.MultiheadAttention(block.ln_1.normalized_shape[0], block.attn.heads)
        with torch.no_grad():
            for theirs, ours in (("in_proj_weight", "qkv.weight"), ("in_proj_bias", "qkv.bias"),
                                 ("out_proj.weight", "proj.weight"), ("out_proj.bias", "proj.bias")):
                self.attn.get_parameter(theirs).copy_(block.attn.get_parameter(ours))
        self.fc, self.proj = copy.deepcopy(block.mlp.fc), copy.deepcopy(block.mlp.proj)

    @staticmethod
    def layer_norm(x, ln):
        mean = x.mean(-1, keepdim=True)
        return (x - mean) / torch.sqrt((x - mean).pow(2).mean(-1, keepdim=True) + ln.eps) * ln.weight + ln.bias

    def forward(self, x):
        x = x.transpose(0, 1)
        h = self.layer_norm(x, self.ln_1)
        x = x + self.attn(h, h, h)[0]
        h = self.fc(self.layer_norm(x, self.ln_2))
        return (x + self.proj(0.5 * h * (1 + torch.erf(h / math.sqrt(2))))).transpose(0, 1)


def naive_tokenizer(model):
    naive = copy.deepcopy(model)
    for blocks in (naive.encoder.blocks, naive.decoder.blocks):
        for i, block in enumerate(blocks):
            blocks[i] = NaiveBlock(block)
    return naive

# ----------------------------------------------------------------------------------------------
# Workloads: each returns (step, items per step, FLOPs per item, item)


def tokenizer(spec, released):
    if released and spec["pixel_decoder"] is not None:
        tok = TwoStageTiTok(TwoStageConfig(**spec["tokenizer"], pixel_decoder=spec["pixel_decoder"])).to(device)
    else:
        tok = TiTok(TiTokConfig(**spec["tokenizer"])).to(device)
    if channels_last and hasattr(tok, "pixel_decoder"):
        tok.pixel_decoder.to(memory_format=torch.channels_last)
    return tok


def bench_tokenizer_train(spec, B, naive=False):
    model = tokenizer(spec, released=False)
    if naive:  # and a plain for-loop AdamW
        model = naive_tokenizer(model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=False)
    else:
        optimizer = model.configure_optimizers(1e-4, 1e-4, (0.9, 0.99), device_type)  # fused on CUDA
    fwd = torch.compile(model) if compile and not naive else model
    size = model.config.image_size
    images = torch.rand(B, 3, size, size)
    images = images.pin_memory() if device_type == "cuda" else images  # as data.batches' are

    def step():
        x = images.to(device, non_blocking=True)
        with ctx:
            recon, q = fwd(x)
        (F.mse_loss(recon.float(), x) + q["commitment"] + q["codebook"]).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step, B, {"autocast": 3 * sum(titok_flops(model.config))}, "img"


def bench_tokenizer_recipe(spec, B):
    """train_tokenizer.py's step with every term of the official single-stage loss (random weights): the tokenizer
    (compiled, as the trainer does) under autocast, L2 + 1.1 x LPIPS/ConvNeXt-S + the quantizer's + the adversarial
    term, then the discriminator's hinge + LeCam step, both optimizers and the EMA. As in the trainer, the loss is
    called inside the autocast and its networks run eager and in fp32 (ReconstructionLoss turns autocast off)."""
    model = tokenizer(spec, released=False)
    optimizer = model.configure_optimizers(1e-4, 1e-4, (0.9, 0.999), device_type)
    model.quantizer.upkeep = CodebookUpkeep(model.config.codebook_size).to(device)  # the usage the trainer logs
    ema = copy.deepcopy(model).requires_grad_(False)
    disc = NLayerDiscriminator().to(device)
    disc_optimizer = torch.optim.AdamW(disc.parameters(), lr=1e-4, fused=device_type == "cuda")
    perceptual = PerceptualLoss("lpips-convnext_s-1.0-0.1", load=False)
    criterion = ReconstructionLoss(perceptual=perceptual, perceptual_weight=1.1, discriminator_start=0).to(device)
    fwd = torch.compile(model) if compile else model
    size = model.config.image_size
    images = torch.rand(B, 3, size, size)
    images = images.pin_memory() if device_type == "cuda" else images
    steps = itertools.count(1)

    def step():
        x = images.to(device, non_blocking=True)
        with ctx:  # the loss too, as train_tokenizer.py calls it: its networks run in fp32 all the same
            recon, bottleneck = fwd(x)
            criterion.tokenizer_loss(x, recon, bottleneck, 0, disc)[0].backward()
            d_loss, d_terms = criterion.discriminator_loss(x, recon, 0, disc)
        d_loss.backward()
        for m, opt in ((model, optimizer), (disc, disc_optimizer)):
            torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        model.quantizer.upkeep.end_step(model.quantizer, optimizer)
        criterion.update_lecam(d_terms["logits_real"], d_terms["logits_fake"])
        update_ema(ema, model, next(steps), 0.999)
    return step, B, {"autocast": 3 * sum(titok_flops(model.config)), "fp32": recipe_loss_flops(size)}, "img"


def bench_loss_term(spec, B, term):
    """What one term of the official single-stage loss adds to a tokenizer step, per image: the perceptual
    network on reconstruction and image, backward to the reconstruction (lpips, convnext_s), or the patch-GAN
    (the adversarial term, backward to the reconstruction, then the discriminator's own step). Random weights,
    run as train_tokenizer.py runs them: through ReconstructionLoss inside the trainer's autocast, which it turns
    off (fp32), and eager (the trainer compiles the tokenizer alone). FLOPs: a forward of the network per image,
    x 3 (the image, the reconstruction and its gradient; the frozen weights get none) or, for the GAN, x 8 (the
    term's forward and its gradient to the reconstruction, then the discriminator's forward on both and its full
    backward)."""
    size = TiTokConfig(**spec["tokenizer"]).image_size
    images, recon = torch.rand(B, 3, size, size, device=device), torch.rand(B, 3, size, size, device=device)
    recon.requires_grad_(True)
    zero = {"commitment": images.new_zeros(()), "codebook": images.new_zeros(())}  # no quantizer here
    if term == "discriminator":
        disc = NLayerDiscriminator().to(device)
        optimizer = torch.optim.AdamW(disc.parameters(), lr=1e-4, fused=device_type == "cuda")
        criterion = ReconstructionLoss(perceptual_weight=0.0, discriminator_start=0).to(device)

        def step():
            with ctx:
                g_loss = criterion.tokenizer_loss(images, recon, zero, 0, disc)[0]
                d_loss = criterion.discriminator_loss(images, recon, 0, disc)[0]
            (g_loss + d_loss).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return step, B, {"fp32": 8 * loss_term_flops(term, size)}, "img"
    perceptual = PerceptualLoss(term, load=False).to(device)
    criterion = ReconstructionLoss(perceptual=perceptual, perceptual_weight=1.0, discriminator_weight=0.0).to(device)

    def step():
        with ctx:
            loss = criterion.tokenizer_loss(images, recon, zero, 0)[0]
        loss.backward()
    return step, B, {"fp32": 3 * loss_term_flops(term, size)}, "img"


def bench_generator_train(spec, B):
    gen = MaskGIT(MaskGITConfig(**spec["generator"])).to(device)
    optimizer = gen.configure_optimizers(0.03, 2e-4, (0.9, 0.96), device_type)
    fwd, cfg = torch.compile(gen) if compile else gen, gen.config
    codes = torch.randint(0, cfg.codebook_size, (B, cfg.num_tokens), device=device)
    labels = torch.randint(0, cfg.num_classes, (B,), device=device)

    def step():
        ids, mask = gen.random_mask(codes)
        with ctx:
            logits = fwd(ids, gen.drop_labels(labels))
        loss(logits, codes, mask, 0.1).backward()
        torch.nn.utils.clip_grad_norm_(gen.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step, B * cfg.num_tokens, {"autocast": 3 * maskgit_flops(cfg) / cfg.num_tokens}, "token"


def sampler(gen, tok):
    """labels -> uint8 images, as one function so that torch.compile takes the whole sampling loop (generate()
    has no host sync in it and batches cond + uncond into one forward) and the decoding with it."""
    def sample(labels):
        with ctx:
            images = tok.decode(gen.generate(labels))
        return (images.float().clamp(0, 1) * 255).to(torch.uint8)
    return torch.compile(sample) if compile else sample


def bench_sample(spec, B):
    gen = MaskGIT(MaskGITConfig(**spec["generator"])).to(device).eval()
    tok = tokenizer(spec, released=True).eval()
    sample, labels = sampler(gen, tok), torch.randint(0, gen.config.num_classes, (B,), device=device)
    return lambda: sample(labels), B, {"autocast": sample_flops(gen.config, tok.config)}, "sample"


def bench_codec(spec, B, part):
    tok = tokenizer(spec, released=True).eval()
    fn, cfg = getattr(tok, part), tok.config
    fn = torch.compile(fn) if compile else fn
    x = (torch.rand(B, 3, cfg.image_size, cfg.image_size, device=device) if part == "encode" else
         torch.randint(0, cfg.codebook_size, (B, cfg.num_latent_tokens), device=device))

    def step():
        with torch.no_grad(), ctx:
            fn(x)
    return step, B, {"autocast": titok_flops(cfg)[part == "decode"]}, "img"


def bench_fid(spec, B):
    # load_inception's model with random weights; float32 with TF32 off whatever the dtype, as features() runs it
    model = InceptionV3().to(device, memory_format=torch.channels_last).eval().requires_grad_(False)
    model = torch.compile(model) if compile else model
    size = TiTokConfig(**spec["tokenizer"]).image_size  # the samples' size; features() resizes them to 299
    images = torch.randint(0, 256, (B, 3, size, size), dtype=torch.uint8, device=device)
    return lambda: features(model, images), B, {"fp32": inception_flops()}, "img"


def measure(step):
    """-> (seconds per step: the fastest of `repeats` synchronised windows, seconds of the untimed warm-up)."""
    sync = torch.cuda.synchronize if device_type == "cuda" else lambda: None
    t0 = time.perf_counter()
    for _ in range(warmup_iters):
        step()
    sync()
    warmup = time.perf_counter() - t0
    best = math.inf
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        for _ in range(bench_iters):
            step()
        sync()
        best = min(best, (time.perf_counter() - t0) / bench_iters)
    return best, warmup


if __name__ == "__main__":
    benches = dict(tokenizer_train=bench_tokenizer_train, tokenizer_recipe=bench_tokenizer_recipe,
                   naive=lambda spec, B: bench_tokenizer_train(spec, B, naive=True),
                   **{t: (lambda spec, B, t=t: bench_loss_term(spec, B, t)) for t in ("lpips", "convnext_s", "discriminator")},
                   generator_train=bench_generator_train, sample=bench_sample, fid=bench_fid,
                   encode=lambda spec, B: bench_codec(spec, B, "encode"), decode=lambda spec, B: bench_codec(spec, B, "decode"))
    names = workloads.split(",")
    if preset not in BENCH_PRESETS or set(names) - set(benches):
        fail(f"preset must be one of {', '.join(BENCH_PRESETS)} (got {preset!r}) and workloads a "
             f"comma-separated list of {', '.join(benches)} (got {workloads!r})")
    device, device_type, dtype, ctx = setup(device, dtype, seed)[4:]
    what = torch.cuda.get_device_name(device) if device_type == "cuda" else f"{torch.get_num_threads()} threads"
    peaks = peak_flops(what) if device_type == "cuda" else None
    print(f"preset {preset} on {device} ({what}), {dtype}, compile {compile}, channels_last {channels_last}; "
          f"{warmup_iters} warm-up iterations, then the best of {repeats} windows of {bench_iters}")
    spec, rates = BENCH_PRESETS[preset], {}
    for workload in names:
        # naive, the recipe and the loss terms: the tokenizer's training batch
        B = batch_size or spec["batch"].get(workload, spec["batch"]["tokenizer_train"])
        if device_type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        step, items, parts, item = benches[workload](spec, B)
        dt, warmup = measure(step)
        rates[workload] = rate = items / dt
        flops = sum(parts.values())
        gpu = f" | MFU {mfu(rate, parts, peaks, dtype):.1%}" if peaks else ""
        if device_type == "cuda":
            gpu += f" | peak memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB"
        print(f"{workload:<16} {rate:>10.1f} {item + '/s':<9} | {flops / 1e9:9.4g} GFLOP/{item:<6} | batch {B:<4} | "
              f"{dt * 1e3:8.1f} ms/iter | {rate * flops / 1e12:.3g} TFLOP/s | warm-up {warmup:.1f} s{gpu}")
        del step  # free the models, and the compiled code that holds them, before the next workload
        torch._dynamo.reset()
        if device_type == "cuda":
            torch.cuda.empty_cache()
    if "naive" in rates and "tokenizer_train" in rates:
        print(f"ours/naive speed ratio {rates['tokenizer_train'] / rates['naive']:.2f} (tokenizer training step, "
              "same model, config and batch)")
