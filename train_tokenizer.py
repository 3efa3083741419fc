"""
Train a TiTok tokenizer on pixels, in the single stage of the released tokenizers (official
ReconstructionLoss_Single_Stage, losses.py): L2 + perceptual (LPIPS + ConvNeXt-S) + a patch-GAN with
LeCam from discriminator_start, + the quantizer's losses (VQ) or the KL (VAE). The moving average (EMA)
of the weights is what evaluation reports and what the checkpoint's "model" holds.

Where a run starts is init_from: from scratch, resuming out_dir exactly, or from weights: a checkpoint, a
released TiTok (fine-tuning on your own images), or a stage-1 checkpoint of two_stage/train_stage1.py with its teacher,
which is the paper's stage 2 (its encoder and codes frozen: `freeze`).

The defaults below are the official single-stage recipe at TiTok-L-32's size on ImageNet 256; the
perceptual loss reads weight files you download (docs/recipes.md). Examples:
  python train_tokenizer.py config/shapes_tokenizer.py            # the CPU demo, synthetic data, pixels only
  torchrun --standalone --nproc_per_node=8 train_tokenizer.py config/imagenet_titok_bl64_vq8k.py --dataset=/data/imagenet
  python train_tokenizer.py config/finetune_tokenizer.py --init_from=tokenizer_titok_bl64_vq8k_imagenet --dataset=<folder>
  python train_tokenizer.py config/shapes_stage2.py               # stage 2 of the two-stage demo (two_stage/)
  python train_tokenizer.py config/shapes_tokenizer.py --init_from=resume   # continue exactly
"""
import copy
import itertools
import os

import torch

from checkpoints import build_tokenizer, load_tokenizer, load_tokenizer_state, model_args_of, tokenizer_config
from configurator import check, fail, script_config
from data import batches, check_dataset, make_datasets
from losses import NLayerDiscriminator, ReconstructionLoss, perceptual_mix
from model import PRESETS
from quantizer import CodebookUpkeep
from training import (Progress, block_means_psnr, check_tokenizer_training, end_ddp, evaluating, get_lr, global_mean,
                      held_out_psnr, micro_step_rng, optimizer_step, psnr, resume, save, set_lr, set_rng_state, setup,
                      stop_if_not_finite, sync_gradients, update_ema, wrap)

# -----------------------------------------------------------------------------
# I/O
out_dir = "out-tokenizer"
# 'scratch'; 'resume' (out_dir/ckpt.pt, exactly); or weights to start from: a trainer's out_dir or ckpt.pt, a released
# TiTok directory or Hugging Face repo id, or a stage-1 out_dir (with `teacher`: the paper's stage 2, two_stage/)
init_from = "scratch"
teacher = ""  # stage 2: the teacher stage 1 learned the proxy codes of; its decoder turns them into pixels
freeze = "auto"  # 'encoder': encoder and quantizer (so the codes) stay as loaded; 'none'; 'auto': 'encoder' in stage 2
eval_interval = 5000  # held-out PSNR, a reconstruction grid and a checkpoint every this many iterations
log_interval = 100
eval_batches = 8  # held-out batches per evaluation
# data
dataset = "data/imagenet"  # 'shapes' (synthetic, built in) or an image folder: root/<class>/<image>
num_train = 20000  # size of the synthetic training set (image folders use all their images)
image_size = 256
num_workers = 8  # DataLoader worker processes (0: load in the training process)
cache_images = False  # 'shapes': keep each image after its first render (memory; best with num_workers=0)
random_crop = False  # training images: a random square of the resized image (the official recipe), else the center
seed = 0  # the data's order and augmentations, and the initialisation
# the paper's model
model_size = "L"  # the encoder: S, B, L (the paper), tiny, mini, micro (CPU demo, tests)
decoder_size = ""  # the decoder: '' as the encoder; the released single-stage models have 'L'
patch_size = 16
layout = "1d"  # '1d': K latent tokens (TiTok); '2d': the g x g patch tokens are the codes (the 2D baseline)
num_latent_tokens = 32  # K (layout '2d': ignored, the code length is (image_size / patch_size)^2)
quantize_mode = "vq"  # 'vq': K integer codes; 'vae': K continuous tokens (the released VAE models); 'fsq': below
token_size = 12
codebook_size = 4096
use_l2_norm = True  # codes on the unit sphere (the paper); False: raw vectors (the released VQ-8k models)
commitment_cost = 0.25
# beyond the paper, off by default
ordered_tokens = False  # training keeps each image's first k of K tokens, k uniform: then any first k codes decode
fsq_levels = [8, 5, 5, 5]  # quantize_mode 'fsq': values per token dim, a fixed grid (token_size 4, codebook_size 1000)
# the official single-stage recipe's loss (docs/recipes.md)
recon_loss = "l2"  # 'l2' or 'l1'
perceptual_loss = "lpips-convnext_s-1.0-0.1"  # 'lpips', 'convnext_s', or 'lpips-convnext_s-A-B' (weights A, B)
perceptual_weight = 1.1  # 0: no perceptual term (and no weight files needed)
vgg16_weights = ""  # torchvision's vgg16-397923af.pth ('' : torch's hub cache, where torchvision keeps it)
lpips_weights = ""  # LPIPS' vgg.pth (the pip package lpips ships it as lpips/weights/v0.1/vgg.pth)
convnext_weights = ""  # torchvision's convnext_small-0c510722.pth ('' : torch's hub cache)
discriminator_start = 200_000  # the patch-GAN: no adversarial term and no discriminator step before this
discriminator_weight = 0.1  # of the adversarial term (0: no GAN)
lecam_weight = 0.001  # LeCam regularisation of the discriminator
disc_learning_rate = 1e-4  # its own AdamW (betas, weight decay, schedule: the tokenizer's, from discriminator_start)
disc_width = 128  # the official discriminator: width of its first stage (a multiple of 32) ...
disc_stages = 3  # ... and number of 2x downsampling stages
quantizer_weight = 1.0  # vq: commitment + codebook losses
kl_weight = 1e-6  # vae: KL to N(0, I), summed over the tokens' dims, averaged over images
clustering_vq = False  # the official upkeep of the VQ-8k models: rarely used codes move towards encoder outputs
ema_decay = 0.999  # the moving average of the weights, min(ema_decay, (1 + t) / (10 + t)) at step t (0: none)
# optimizer: AdamW, linear warm-up then cosine decay
batch_size = 32  # per process, per micro-step
gradient_accumulation_steps = 8  # in total, divided between the processes: 32 x 8 = 256 images per step
learning_rate = 1e-4
max_iters = 1_000_000  # 200 epochs of ImageNet at batch 256
weight_decay = 1e-4
beta1, beta2 = 0.9, 0.999
grad_clip = 1.0  # 0 disables
warmup_iters = 10_000
lr_decay_iters = 0  # 0: decay until max_iters
min_lr = 1e-5
# the small-budget aids (aids/; not in the paper): what the CPU demo and the photo recipe add
routing_init = False  # layout '1d': start with the latents routed to patches
routing_scatter = False  # with routing_init: each latent starts reading one patch per head, patches that lie apart
head_upsample = 1  # the pixel head: 1 (the paper's, p*p values per patch) or 4 (a 4x4 grid, upsampled)
conv_out_padding = "zeros"  # the pixel head's last 3x3 conv at the border: "zeros" (official) or "replicate"
dead_code_restart = False  # re-seed codes unused for usage_window steps from current encoder outputs
usage_window = 1000  # steps unused after which a code counts as dead (the logged usage, and the restart)
brightness_shift = 0.0  # each training image shifted by up to this much, all channels alike (0: none)
saturation_shift = 0.0  # ... then its colours' distance from grey scaled by 1 +- up to this much (0: none)
# system
device = "auto"  # 'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1', ...
dtype = "auto"  # 'auto' (bfloat16 on CUDA, float32 on CPU), 'float32', 'bfloat16'
compile = True  # torch.compile the model (the CPU configs turn it off: there it costs more than it saves)
ddp_timeout = 60  # minutes a process may wait for the others (rank 0 evaluates and writes the checkpoint alone)
# -----------------------------------------------------------------------------
config = script_config(globals())
# every value a user can type, checked before any work: one line `error: ...` and exit status 2
check_tokenizer_training(config, PRESETS)
check(config, "> 0", ["disc_width", "disc_stages"])
check(config, ">= 0", ["perceptual_weight", "discriminator_start", "discriminator_weight", "lecam_weight",
                       "disc_learning_rate", "kl_weight"])
check(config, "in [0, 1)", ["ema_decay", "brightness_shift", "saturation_shift"])
check(config, ("l2", "l1"), ["recon_loss"])
check(config, ("", *PRESETS), ["decoder_size"])
check(config, ("auto", "encoder", "none"), ["freeze"])
if routing_scatter and not routing_init:
    fail("routing_scatter is a form of the routing init: set --routing_init=True as well")
if disc_width % 32:
    fail(f"disc_width={disc_width} is not a multiple of 32, the discriminator's GroupNorm groups; set --disc_width to one")
if quantize_mode == "fsq" and (dead_code_restart or clustering_vq):
    fail("dead_code_restart and clustering_vq move a learned codebook, and FSQ's codebook is a fixed grid: set "
         "--dead_code_restart=False and --clustering_vq=False")
if ordered_tokens and init_from not in ("scratch", "resume"):
    fail(f"ordered_tokens adds a learned token to the decoder of a model built here, not to the weights of {init_from}: "
         "set --init_from=scratch or --ordered_tokens=False")
if teacher and init_from == "scratch":
    fail(f"teacher={teacher!r} is for stage 2, which starts from a stage-1 checkpoint: set --init_from to its out_dir")
decoder = PRESETS[decoder_size or model_size]
model_args = dict(image_size=image_size, patch_size=patch_size, layout=layout,
                  num_latent_tokens=num_latent_tokens if layout == "1d" else (image_size // patch_size) ** 2,
                  quantize_mode=quantize_mode, token_size=token_size, codebook_size=codebook_size,
                  use_l2_norm=use_l2_norm, commitment_cost=commitment_cost, **PRESETS[model_size],
                  decoder_width=decoder["width"], decoder_depth=decoder["depth"], decoder_heads=decoder["heads"])
if (head_upsample, conv_out_padding) != (1, "zeros"):
    model_args.update(head_upsample=head_upsample, conv_out_padding=conv_out_padding)
if quantize_mode == "fsq":
    model_args["fsq_levels"] = fsq_levels
if ordered_tokens:
    model_args["ordered_tokens"] = True
try:  # the model's settings, checked where they are defined (TiTokConfig, aids/)
    if init_from == "scratch":
        model_config = tokenizer_config(model_args)[1]
        if routing_init:
            from aids.routing import check_routing, route_by_position
            check_routing(model_config, routing_scatter)
except ValueError as e:
    fail(str(e))
check_dataset(dataset)
perceptual = None
try:
    perceptual_mix(perceptual_loss)
    if perceptual_weight > 0:  # the weight files, read now: a missing or wrong one stops the run before any work
        from nets.perceptual import PerceptualLoss
        perceptual = PerceptualLoss(perceptual_loss, vgg16_weights or None, lpips_weights or None, convnext_weights or None)
except (OSError, ValueError) as e:
    fail(f"perceptual_loss={perceptual_loss!r}: {str(e).splitlines()[0]} (or set --perceptual_weight=0)")
# -----------------------------------------------------------------------------

ddp, rank, local_rank, world_size, device, device_type, dtype, ctx = setup(device, dtype, seed, ddp_timeout)
master = rank == 0
gradient_accumulation_steps //= world_size
lr_decay_iters = lr_decay_iters or max_iters
ckpt_path = os.path.join(out_dir, "ckpt.pt")

# the model: resumed, built, or loaded from the weights init_from names


def stage1(args):
    """model_args of a stage-1 checkpoint of the two-stage recipe (two_stage/)."""
    return "proxy_codebook_size" in args and args.get("pixel_decoder") is None


iter_num, checkpoint = 0, resume(init_from, out_dir, "tokenizer")
if checkpoint is not None:
    model_args, iter_num = checkpoint["model_args"], checkpoint["iter_num"]  # the checkpoint's architecture
    if stage1(model_args):
        fail(f"{out_dir} holds a stage-1 checkpoint of the two-stage recipe: resume it with python -m two_stage.train_stage1")
    model = build_tokenizer(model_args)
elif init_from != "scratch":
    try:
        model = load_tokenizer(init_from)
        model_args = model_args_of(model)
        if teacher or stage1(model_args):  # the paper's stage 2: the stage-1 model with its teacher's decoder
            from two_stage.titok import start_stage2
            model, model_args = start_stage2(model, init_from, teacher)
        model.train()
    except (OSError, ValueError) as e:
        fail(f"init_from={init_from!r} (not 'scratch' or 'resume': weights to start from): {str(e).splitlines()[0]}")
else:
    model = build_tokenizer(model_args)
    if routing_init:
        route_by_position(model, routing_scatter)
frozen = freeze == "encoder" or (freeze == "auto" and model_args.get("pixel_decoder") is not None)
if not frozen and model_args.get("quantize_mode", "vq") != "vae":  # the codebook's usage, restarts, clustering
    model.quantizer.upkeep = CodebookUpkeep(model_args["codebook_size"], usage_window, dead_code_restart, clustering_vq,
                                            model_args["token_size"])
image_size = config["image_size"] = model_args["image_size"]  # resumed or loaded: the checkpoint's images
ordered, K = model_args.get("ordered_tokens", False), model_args["num_latent_tokens"]
if master:
    os.makedirs(out_dir, exist_ok=True)

train_set, val_set = make_datasets(dataset, image_size, num_train, max(eval_batches * batch_size, 64), seed, cache_images)

if checkpoint is not None:
    load_tokenizer_state(model, checkpoint["resume"].get("raw", checkpoint["model"]), ckpt_path)
if frozen:
    model.freeze_encoder()
model.to(device)
ema_model = copy.deepcopy(model).requires_grad_(False) if ema_decay > 0 else None
if ema_model is not None and checkpoint is not None:
    load_tokenizer_state(ema_model, checkpoint["model"], ckpt_path)
optimizer = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type)
criterion = ReconstructionLoss(recon_loss, perceptual=perceptual, perceptual_weight=perceptual_weight,
                               discriminator_start=discriminator_start, discriminator_weight=discriminator_weight,
                               lecam_weight=lecam_weight, quantizer_weight=quantizer_weight, kl_weight=kl_weight).to(device)
use_gan = discriminator_weight > 0
disc_model = disc = None
if use_gan:
    disc_model = NLayerDiscriminator(disc_width, disc_stages).to(device)
    groups = [[p for p in disc_model.parameters() if p.ndim >= 2], [p for p in disc_model.parameters() if p.ndim < 2]]
    disc_optimizer = torch.optim.AdamW([{"params": groups[0], "weight_decay": weight_decay},  # not biases and norms
                                        {"params": groups[1], "weight_decay": 0.0}], lr=disc_learning_rate,
                                       betas=(beta1, beta2), fused=device_type == "cuda")
if checkpoint is not None:
    state = checkpoint["resume"]
    optimizer.load_state_dict(state["optimizer"])
    if use_gan and "discriminator" in state:
        disc_model.load_state_dict(state["discriminator"])
        disc_optimizer.load_state_dict(state["disc_optimizer"])
        criterion.ema_real.fill_(state["lecam"][0])
        criterion.ema_fake.fill_(state["lecam"][1])
    set_rng_state(state["rng"])
    checkpoint = state = None  # free memory
raw_model, upkeep = model, model.quantizer.upkeep
model = wrap(model, compile, ddp, local_rank)
if use_gan:  # its DDP copy for its own step; the adversarial term of the tokenizer reads disc_model itself
    disc = wrap(disc_model, False, ddp, local_rank)
eval_model = ema_model if ema_model is not None else raw_model
if master:
    n_params = sum(p.numel() for p in raw_model.parameters())
    n_trained = sum(p.numel() for p in raw_model.parameters() if p.requires_grad)
    terms = ["L1" if recon_loss == "l1" else "L2"] + ([f"{perceptual_weight} x {perceptual_loss}"] if perceptual else [])
    terms += [f"GAN x {discriminator_weight} from step {discriminator_start}"] if use_gan else []
    size = next((name for name, p in PRESETS.items() if all(model_args[k] == v for k, v in p.items())), "custom")
    mode = model_args.get("quantize_mode", "vq") + (f" {model_args['fsq_levels']}" if model_args.get("fsq_levels") else "")
    print(f"TiTok {size}-{model_args['num_latent_tokens']} ({model_args['layout']}, {mode}{', ordered tokens' * ordered})"
          f"{', stage 2' if model_args.get('pixel_decoder') is not None else ''}{', encoder frozen' if frozen else ''}: "
          f"{n_params / 1e6:.2f}M parameters ({n_trained / 1e6:.2f}M trained), "
          f"{len(train_set)} training images, {batch_size * gradient_accumulation_steps * world_size} images per step, "
          f"device {device} ({dtype}); loss {' + '.join(terms)}{f', EMA {ema_decay}' if ema_model is not None else ''}")
    if getattr(val_set, "held_out_note", None):
        print(val_set.held_out_note)
    # what the code's bits would buy with no learning, on the images of every evaluation
    val_images = torch.cat([x for x, _ in itertools.islice(batches(val_set, batch_size, seed), eval_batches)])
    print("held-out PSNR with no learning: " + block_means_psnr(val_images))


def reconstruct(images):
    with ctx:
        return eval_model(images)[0]


def evaluate_and_save():
    eval_model.eval()
    val_psnr = held_out_psnr(reconstruct, itertools.islice(batches(val_set, batch_size, seed, device=device), eval_batches),
                             os.path.join(out_dir, "recon.png"))
    raw_model.train()
    print(f"eval {iter_num}: held-out PSNR{' (EMA weights)' if ema_model is not None else ''} {val_psnr:.2f} dB; "
          f"grid in {out_dir}/recon.png")
    state = dict(optimizer=optimizer.state_dict())
    if ema_model is not None:  # the trained weights, beside their average in 'model'
        state["raw"] = raw_model.state_dict()
    if use_gan:
        state.update(discriminator=disc_model.state_dict(), disc_optimizer=disc_optimizer.state_dict(),
                     lecam=[criterion.ema_real.item(), criterion.ema_fake.item()])
    save(ckpt_path, eval_model, model_args, config, iter_num, **state)


def progress_parts(mean, stats, disc_on):
    parts = [f"loss {mean['loss']:.4f}", f"rec {mean['rec']:.4f}", f"psnr {mean['psnr']:.2f} dB"]
    parts += [f"kl {mean['kl']:.1f}"] if "kl" in mean else []
    parts += [f"perceptual {mean['perceptual']:.4f}"] if perceptual else []
    parts += [f"gan g {mean['g']:.4f} d {mean['d']:.4f}"] if disc_on else []
    parts += [f"codebook usage {stats['usage'].item():.1%} ppl {stats['perplexity'].item():.0f}"] if stats else []
    return parts


train_batches = batches(train_set, batch_size, seed, iter_num * gradient_accumulation_steps, rank, world_size,
                        flip=True, brightness_shift=brightness_shift, saturation_shift=saturation_shift,
                        workers=num_workers, device=device, random_crop=random_crop)
nonfinite = torch.zeros((), dtype=torch.bool, device=device)
progress, iter_start = Progress(iter_num, max_iters, batch_size * gradient_accumulation_steps * world_size, "img"), iter_num
while True:
    lr = set_lr(optimizer, get_lr(iter_num, learning_rate, min_lr, warmup_iters, lr_decay_iters))
    if evaluating(iter_num, iter_start, eval_interval, max_iters):
        stop_if_not_finite(nonfinite, iter_num, ckpt_path)
        if master:
            evaluate_and_save()
    if iter_num >= max_iters:
        break

    disc_on = use_gan and iter_num >= discriminator_start  # the adversarial term, and the discriminator's step
    sums = {}  # what the progress line shows, summed over this step's micro-steps
    for micro_step in range(gradient_accumulation_steps):
        images, _ = next(train_batches)
        rng = micro_step_rng(seed, (iter_num * gradient_accumulation_steps + micro_step) * world_size + rank, device)
        # ordered tokens: each image keeps its first k, k uniform in 1..K as One-D-Piece's tail drop, drawn per image
        # as FlexTok's nested dropout (its powers of two would leave most k of a K = 12 untrained)
        keep = torch.randint(1, K + 1, (len(images),), device=device, generator=rng) if ordered else None
        sync_gradients([model, disc], micro_step == gradient_accumulation_steps - 1)
        with ctx:  # the loss too, as the official trainer calls it; ReconstructionLoss runs it in fp32 all the same
            recon, bottleneck = model(images, keep)
            loss, terms = criterion.tokenizer_loss(images, recon, bottleneck, iter_num, disc_model if disc_on else None)
        nonfinite |= ~torch.isfinite(loss.detach())
        (loss / gradient_accumulation_steps).backward()
        shown = {"loss": loss.detach(), "rec": terms["rec"], "psnr": psnr(recon.detach().float(), images).mean()}
        if "kl" in bottleneck:
            shown["kl"] = bottleneck["kl"].detach()
        if perceptual:
            shown["perceptual"] = terms["perceptual"]
        if disc_on:  # real images against the (detached) reconstructions
            with ctx:
                d_loss, d_terms = criterion.discriminator_loss(images, recon, iter_num, disc)
            nonfinite |= ~torch.isfinite(d_loss.detach())
            (d_loss / gradient_accumulation_steps).backward()
            shown.update(g=terms["gan"], d=d_loss.detach(), real=d_terms["logits_real"], fake=d_terms["logits_fake"])
        sums = {k: sums.get(k, 0) + v for k, v in shown.items()}
    optimizer_step(model.parameters(), optimizer, grad_clip)
    # the codebook's usage, and dead codes re-seeded after the step (with fresh moments): once per optimizer step
    stats = upkeep.end_step(raw_model.quantizer, optimizer) if upkeep is not None else {}
    mean = global_mean(sums, gradient_accumulation_steps) if disc_on or (iter_num + 1) % log_interval == 0 else None
    if disc_on:  # the tokenizer's schedule, started at discriminator_start
        set_lr(disc_optimizer, get_lr(iter_num - discriminator_start, disc_learning_rate,
                                      min_lr * disc_learning_rate / learning_rate, warmup_iters,
                                      lr_decay_iters - discriminator_start))
        optimizer_step(disc_model.parameters(), disc_optimizer, grad_clip)
        criterion.update_lecam(mean["real"], mean["fake"])  # once a step, from the whole global batch
    iter_num += 1
    if ema_model is not None:
        update_ema(ema_model, raw_model, iter_num, ema_decay)
        if stats.get("restarted") is not None:  # a re-seeded code starts afresh in the average too
            ema_model.quantizer.codebook.weight.data[stats["restarted"]] = raw_model.quantizer.codebook.weight.data[stats["restarted"]]

    if iter_num % log_interval == 0:
        stop_if_not_finite(nonfinite, iter_num, ckpt_path)
        if master:
            print(progress.line(iter_num, log_interval, progress_parts(mean, stats, disc_on) + [f"lr {lr:.2e}"]))

if getattr(train_set, "skipped", 0) and master:
    print(f"skipped {train_set.skipped} unreadable images")
if ddp:
    end_ddp()
