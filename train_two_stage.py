"""
Train a TiTok tokenizer in the paper's two stages (EXPERIMENTS.md, "Two-stage recipe"; the model: two_stage.py).

  stage 1  proxy codes: a frozen 2D teacher (the MaskGIT-VQGAN, or a layout-'2d' tokenizer trained by
           train_tokenizer.py) codes each image as a g x g grid; the decoder predicts, per patch,
           logits over the teacher's codebook. Loss: cross-entropy to the teacher's codes + quantizer losses.
  stage 2  decoder finetuning: from a stage-1 checkpoint, encoder and quantizer frozen;
           softmax(logits) . teacher codebook -> teacher decoder -> pixels, trained with L2 (+ a
           patch-GAN after gan_start_iter, + an optional perceptual term). The moving average of
           the weights is what is evaluated and saved.

The defaults below are the paper's TiTok-L-32 on ImageNet 256. Examples:
  python train_two_stage.py config/shapes_stage1.py              # the CPU demo (after config/shapes_tokenizer_2d.py)
  python train_two_stage.py config/shapes_stage2.py
  torchrun --standalone --nproc_per_node=8 train_two_stage.py config/imagenet_titok_l32_stage1.py --dataset=/data/imagenet
  python train_two_stage.py config/shapes_stage2.py --init_from=resume   # continue exactly
"""
import copy
import itertools
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from configurator import check, configure, fail
from data import batches, check_dataset, make_dataset
from discriminator import PatchDiscriminator, generator_loss
from model import PRESETS
from pretrained import build_tokenizer, load_teacher
from training import (check_tokenizer_training, end_ddp, format_time, get_lr, global_mean, held_out_psnr,
                      load_checkpoint, psnr, rng_state, save_checkpoint, set_rng_state, setup, stop_if_not_finite)
from two_stage import proxy_loss

# -----------------------------------------------------------------------------
# I/O
out_dir = "out-two-stage"
init_from = "scratch"  # 'scratch' (stage 1: new weights; stage 2: stage1_ckpt's) or 'resume' (out_dir/ckpt.pt)
eval_interval = 5000  # held-out PSNR, a reconstruction grid and a checkpoint every this many iterations
log_interval = 100
eval_batches = 8  # held-out batches per evaluation
# the recipe
stage = 1  # 1: proxy codes of a 2D teacher; 2: finetune a stage-1 decoder on pixels
teacher = ""  # maskgit-vqgan-imagenet-f16-256.bin, or a layout-'2d' checkpoint of train_tokenizer.py
stage1_ckpt = ""  # stage 2: the stage-1 checkpoint (ckpt.pt, or its out_dir) to start from
# data
dataset = "data/imagenet"  # 'shapes' (synthetic, built in) or an image folder: root/<class>/<image>
num_train = 20000  # size of the synthetic training set (image folders use all their images)
image_size = 256
num_workers = 8  # DataLoader worker processes (0: load in the training process)
cache_images = False  # 'shapes': keep each image after its first render (memory; best with num_workers=0)
# model (stage 2: must be stage 1's, checked)
model_size = "L"  # S, B, L (the paper), tiny, micro (CPU demo, tests)
patch_size = 16  # the teacher's grid: image_size / patch_size must be the teacher's
layout = "1d"  # '2d': a 2D student (a control)
num_latent_tokens = 32  # K
token_size = 12
codebook_size = 4096
commitment_cost = 0.25
dead_code_restart = False  # re-seed codes unused for usage_window steps from current encoder outputs
usage_window = 1000
# loss
quantizer_weight = 1.0  # stage 1 (stage 2 freezes the quantizer)
ema_decay = 0.999  # stage 2: evaluation and the saved 'model' use this moving average of the weights
gan_weight = 0.01  # stage 2: weight of the decoders' adversarial loss (0: no GAN)
gan_start_iter = 20_000  # stage 2: no adversarial loss and no discriminator update before this iteration
disc_learning_rate = 1e-4
disc_width = 128  # the discriminator: width of its first stage (a multiple of 32) ...
disc_stages = 3  # ... and number of 2x downsampling stages
lecam_weight = 0.001  # LeCam regularisation of the discriminator
perceptual_weight = 0.0  # stage 2: L2 between FID-Inception features of reconstruction and image (0: off)
perceptual_weights = ""  # ... read from this file (fid.py's pt_inception-2015-12-05-6726825d.pth; '' = $FID_WEIGHTS)
# optimizer: AdamW, linear warm-up then cosine decay
batch_size = 32  # per process, per micro-step
gradient_accumulation_steps = 8  # in total, divided between the processes: 32 x 8 = 256 images per step
learning_rate = 1e-4
max_iters = 1_000_000  # 200 epochs of ImageNet at batch 256
weight_decay = 1e-4
beta1, beta2 = 0.9, 0.99
grad_clip = 1.0  # 0 disables
warmup_iters = 10_000
lr_decay_iters = 0  # 0: decay until max_iters
min_lr = 1e-5
# system
device = "auto"  # 'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1', ...
dtype = "auto"  # 'auto' (bfloat16 on CUDA, float32 on CPU), 'float32', 'bfloat16'
compile = True  # torch.compile the model on CUDA (ignored on CPU, where compiling costs more than it saves)
seed = 0
# -----------------------------------------------------------------------------
config_keys = [k for k, v in globals().items() if not k.startswith("_") and isinstance(v, (int, float, bool, str))]
globals().update(configure(sys.argv[1:], {k: globals()[k] for k in config_keys}))
config = {k: globals()[k] for k in config_keys}
# every value a user can type, checked before any work: one line `error: ...` and exit status 2
check_tokenizer_training(config, PRESETS)
check(config, "> 0", ["disc_width", "disc_stages"])
check(config, ">= 0", ["gan_weight", "gan_start_iter", "disc_learning_rate", "lecam_weight", "perceptual_weight"])
check(config, "in [0, 1]", ["ema_decay"])
check(config, (1, 2), ["stage"])
if disc_width % 32:
    fail(f"disc_width={disc_width} is not a multiple of 32, the discriminator's GroupNorm groups; set --disc_width to one")
check_dataset(dataset)
# -----------------------------------------------------------------------------

ddp, rank, local_rank, world_size, device, device_type, dtype, ctx = setup(device, dtype, seed)
master = rank == 0
gradient_accumulation_steps //= world_size
lr_decay_iters = lr_decay_iters or max_iters
grid = image_size // patch_size
ckpt_path = os.path.join(out_dir, "ckpt.pt")

# the frozen 2D teacher, and checks that it fits, before any training
if not teacher:
    fail(f"stage {stage} needs a teacher: --teacher=PATH (a MaskGIT-VQGAN .bin, or a checkpoint of "
             "train_tokenizer.py trained with --layout=2d)")
try:
    teacher_model, teacher_grid, teacher_codebook, pixel_decoder = load_teacher(teacher, image_size, device)
except (FileNotFoundError, ValueError) as e:
    fail(str(e))
if teacher_grid != grid:
    fail(f"the teacher {teacher} codes a {image_size}px image as {teacher_grid}x{teacher_grid}, but "
             f"patch_size {patch_size} gives {grid}x{grid} patches: they must agree")
n_codes = len(teacher_codebook)

model_args = dict(image_size=image_size, patch_size=patch_size, layout=layout,
                  num_latent_tokens=num_latent_tokens if layout == "1d" else grid * grid, token_size=token_size,
                  codebook_size=codebook_size, commitment_cost=commitment_cost, usage_window=usage_window,
                  dead_code_restart=dead_code_restart, proxy_codebook_size=n_codes, **PRESETS[model_size])
iter_num, best_psnr, checkpoint, stage1 = 0, 0.0, None, None
if init_from == "resume":
    checkpoint = load_checkpoint(ckpt_path, "checkpoint to resume from", "tokenizer")
    if checkpoint["config"].get("stage", 0) != stage:
        fail(f"{ckpt_path} was trained with stage={checkpoint['config'].get('stage', 0)}, this run has stage={stage}")
    model_args = checkpoint["model_args"]  # the architecture is the checkpoint's, whatever the flags say
    iter_num, best_psnr = checkpoint["iter_num"], checkpoint["best_psnr"]
elif stage == 2:
    if not stage1_ckpt:
        fail("stage 2 starts from a stage-1 checkpoint: --stage1_ckpt=PATH (its ckpt.pt or out_dir)")
    path = os.path.join(stage1_ckpt, "ckpt.pt") if os.path.isdir(stage1_ckpt) else stage1_ckpt
    stage1 = load_checkpoint(path, "stage-1 checkpoint", "tokenizer")
    if stage1.get("config", {}).get("stage") != 1:
        fail(f"{path} is not a stage-1 checkpoint (it was trained with "
                 f"stage={stage1.get('config', {}).get('stage', 0)})")
    theirs = stage1["model_args"]
    if theirs["proxy_codebook_size"] != n_codes:
        fail(f"the teacher {teacher} has {n_codes} codes, but the stage-1 model {path} predicts "
                 f"{theirs['proxy_codebook_size']}: it was trained against another teacher")
    diff = [f"{k}={theirs.get(k)!r} there, {v!r} here" for k, v in model_args.items() if theirs.get(k) != v]
    if diff:
        fail(f"the stage-1 checkpoint {path} has another configuration than this run: {'; '.join(diff)}")
    model_args["pixel_decoder"] = pixel_decoder
if model_args["proxy_codebook_size"] != n_codes:
    fail(f"the teacher {teacher} has {n_codes} codes, but {ckpt_path} predicts {model_args['proxy_codebook_size']}")
if stage == 2 and perceptual_weight > 0:
    from fid import inception_input, load_inception
    try:
        inception = load_inception(perceptual_weights or None, device)
    except (FileNotFoundError, ValueError) as e:
        fail(f"perceptual_weight > 0 needs the FID Inception weights: {e}")
if master:
    os.makedirs(out_dir, exist_ok=True)

train_set = make_dataset(dataset, image_size, "train", num_train, seed, cache_images)
val_set = make_dataset(dataset, image_size, "val", max(eval_batches * batch_size, 64), seed)

model = build_tokenizer(model_args).to(device)  # a two_stage.TwoStageTiTok
if stage1 is not None:  # stage 2 starts from stage 1's weights and the teacher's codebook and decoder
    model.load_state_dict({**stage1["model"], "pixel_codebook": teacher_codebook,
                           **{f"pixel_decoder.{k}": v for k, v in teacher_model.decoder.state_dict().items()}})
    stage1 = None
if checkpoint is not None:
    model.load_state_dict(checkpoint["model"])  # stage 2: the moving average
if stage == 2:
    teacher_model = None  # its decoder is now part of the model
    model.freeze_encoder()
    ema_model = copy.deepcopy(model).requires_grad_(False).eval()  # the average starts at the weights loaded
    if checkpoint is not None:
        model.load_state_dict({**checkpoint["model"], **checkpoint["raw"]})  # the trained weights themselves
    trained = [p for p in model.parameters() if p.requires_grad]
    averaged = [e for e, p in zip(ema_model.parameters(), model.parameters()) if p.requires_grad]
optimizer = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type)
use_gan = stage == 2 and gan_weight > 0
if use_gan:
    disc_model = PatchDiscriminator(disc_width, disc_stages).to(device)
    disc_optimizer = torch.optim.AdamW(disc_model.parameters(), lr=disc_learning_rate, betas=(beta1, beta2),
                                       weight_decay=weight_decay, fused=device_type == "cuda")
if checkpoint is not None:
    optimizer.load_state_dict(checkpoint["optimizer"])
    if use_gan:
        disc_model.load_state_dict(checkpoint["discriminator"])  # with its LeCam running means
        disc_optimizer.load_state_dict(checkpoint["disc_optimizer"])
    set_rng_state(checkpoint["rng"])
    if master:
        print(f"resumed from {ckpt_path} at iteration {iter_num}")
    checkpoint = None  # free memory
raw_model = model
if compile and device_type == "cuda":
    model = torch.compile(model)
if ddp:
    model = DDP(model, device_ids=[local_rank] if device_type == "cuda" else None)
if use_gan:
    disc = DDP(disc_model, device_ids=[local_rank] if device_type == "cuda" else None) if ddp else disc_model
eval_model = ema_model if stage == 2 else raw_model
if master:
    n_params = sum(p.numel() for p in raw_model.parameters())
    n_trained = sum(p.numel() for p in raw_model.parameters() if p.requires_grad)
    print(f"TiTok {model_size}-{model_args['num_latent_tokens']} ({model_args['layout']}), stage {stage}: "
          f"{n_params / 1e6:.2f}M parameters ({n_trained / 1e6:.2f}M trained), {len(train_set)} training images, "
          f"{batch_size * gradient_accumulation_steps * world_size} images per step, device {device} ({dtype})")
    if getattr(val_set, "held_out_note", None):
        print(val_set.held_out_note)


def perceptual_loss(recon, images):
    """L2 between the FID Inception's pool features of reconstructions and images (fid.py's resize and
    scaling). A stand-in for the official LPIPS + ConvNeXt terms, which need weights we do not ship."""
    features = inception(inception_input(torch.cat([recon, images]))).float()
    ours, theirs = features.chunk(2)
    return F.mse_loss(ours, theirs.detach())


def reconstruct(images):
    """Stage 2: the model's pixels. Stage 1: the teacher's decoding of the predicted codes, and their
    accuracy against the teacher's codes (into `accuracies`)."""
    with ctx:
        recon = eval_model(images)[0].float()
        if stage == 1:
            accuracies.append(proxy_loss(recon, teacher_model.encode(images))[1])
            recon = teacher_model.decode(recon.argmax(1).flatten(1))
    return recon


train_batches = batches(train_set, batch_size, seed, iter_num * gradient_accumulation_steps, rank, world_size,
                        flip=True, workers=num_workers, device=device)
nonfinite = torch.zeros((), dtype=torch.bool, device=device)
t0, t_start, iter_start = time.time(), time.time(), iter_num
while True:
    lr = get_lr(iter_num, learning_rate, min_lr, warmup_iters, lr_decay_iters)
    for group in optimizer.param_groups:
        group["lr"] = lr

    if iter_num % eval_interval == 0 and iter_num > iter_start or iter_num == max_iters:
        stop_if_not_finite(nonfinite, iter_num, ckpt_path)
        if master:
            was_training, accuracies = eval_model.training, []
            eval_model.eval()
            val_psnr = held_out_psnr(reconstruct, itertools.islice(batches(val_set, batch_size, seed, device=device),
                                                                   eval_batches), os.path.join(out_dir, "recon.png"))
            eval_model.train(was_training)
            best_psnr = max(best_psnr, val_psnr)
            if stage == 1:
                print(f"eval {iter_num}: held-out PSNR (teacher decoding) {val_psnr:.2f} dB (best {best_psnr:.2f}), "
                      f"proxy-code accuracy {torch.stack(accuracies).mean().item():.1%}; grid in {out_dir}/recon.png")
            else:
                print(f"eval {iter_num}: held-out PSNR (EMA weights) {val_psnr:.2f} dB (best {best_psnr:.2f}); "
                      f"grid in {out_dir}/recon.png")
            state = {"model": eval_model.state_dict(), "optimizer": optimizer.state_dict(), "model_args": model_args,
                     "iter_num": iter_num, "best_psnr": best_psnr, "config": config, "rng": rng_state()}
            if stage == 2:  # the trained weights, beside their average in 'model', for an exact resume
                state["raw"] = {k: p.detach() for k, p in raw_model.named_parameters() if p.requires_grad}
            if use_gan:
                state.update(discriminator=disc_model.state_dict(), disc_optimizer=disc_optimizer.state_dict())
            save_checkpoint(state, ckpt_path)
    if iter_num >= max_iters:
        break

    gan_on = use_gan and iter_num >= gan_start_iter
    sums = {}  # what the progress line shows, summed over this step's micro-steps
    for micro_step in range(gradient_accumulation_steps):
        images, _ = next(train_batches)
        last = micro_step == gradient_accumulation_steps - 1
        if ddp:  # synchronise gradients on the last micro-step only
            model.require_backward_grad_sync = last
            if gan_on:
                disc.require_backward_grad_sync = last
        if stage == 1:
            with torch.no_grad(), ctx:
                codes = teacher_model.encode(images)  # of the flipped images, like the student's input
        with ctx:
            recon, q_losses, _ = model(images)
        recon = recon.float()  # the losses in fp32
        if stage == 1:
            rec, accuracy = proxy_loss(recon, codes)
            loss = rec + quantizer_weight * (q_losses["commitment"] + q_losses["codebook"])
        else:
            rec = loss = F.mse_loss(recon, images)  # the quantizer is frozen
        if stage == 2 and perceptual_weight > 0:
            with ctx:
                perceptual = perceptual_loss(recon, images)
            loss = loss + perceptual_weight * perceptual
        if gan_on:
            disc_model.requires_grad_(False)  # the decoders' adversarial loss trains the decoders only
            with ctx:
                g_loss = generator_loss(disc_model(recon))
            loss = loss + gan_weight * g_loss
        nonfinite |= ~torch.isfinite(loss.detach())
        (loss / gradient_accumulation_steps).backward()
        if gan_on:  # the discriminator's step: real images against the (detached) reconstructions
            disc_model.requires_grad_(True)
            with ctx:
                logits_real, logits_fake = disc(torch.cat([images, recon.detach()])).chunk(2)
            d_loss = disc_model.loss(logits_real, logits_fake, lecam_weight)
            nonfinite |= ~torch.isfinite(d_loss.detach())
            (d_loss / gradient_accumulation_steps).backward()
        shown = {"loss": loss, "rec": rec}
        if stage == 1:
            shown["accuracy"] = accuracy
        else:
            shown["psnr"] = psnr(recon.detach(), images)
        if stage == 2 and perceptual_weight > 0:
            shown["perceptual"] = perceptual
        if gan_on:
            shown.update(g=g_loss, d=d_loss)
        sums = {k: sums.get(k, 0) + v.detach() for k, v in shown.items()}
    if stage == 1:  # the codebook's usage and dead-code restarts count optimizer steps
        stats = raw_model.quantizer.end_step()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if gan_on:
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(disc_model.parameters(), grad_clip)
        disc_optimizer.step()
        disc_optimizer.zero_grad(set_to_none=True)
    if stage == 2:
        torch._foreach_lerp_(averaged, [p.detach() for p in trained], 1.0 - ema_decay)  # EMA of the weights
    iter_num += 1

    if iter_num % log_interval == 0:
        stop_if_not_finite(nonfinite, iter_num, ckpt_path)
        mean = global_mean(sums, gradient_accumulation_steps)  # of the whole global batch, whatever the processes
        if master:
            dt, t0 = time.time() - t0, time.time()
            speed = log_interval * batch_size * gradient_accumulation_steps * world_size / dt
            eta = (time.time() - t_start) / (iter_num - iter_start) * (max_iters - iter_num)
            if stage == 1:
                parts = [f"ce {mean['rec']:.4f}", f"proxy-code accuracy {mean['accuracy']:.1%}",
                         f"codebook usage {stats['usage'].item():.1%} ppl {stats['perplexity'].item():.0f}"]
            else:
                parts = [f"rec {mean['rec']:.4f}", f"psnr {mean['psnr']:.2f} dB"]
            if stage == 2 and perceptual_weight > 0:
                parts.append(f"perceptual {mean['perceptual']:.4f}")
            if gan_on:
                parts.append(f"gan g {mean['g']:.4f} d {mean['d']:.4f}")
            print(f"iter {iter_num}/{max_iters} | loss {mean['loss']:.4f} | {' | '.join(parts)} | lr {lr:.2e} | "
                  f"{speed:.0f} img/s | eta {format_time(eta)}")

if isinstance(train_set, torch.utils.data.Dataset) and getattr(train_set, "skipped", 0) and master:
    print(f"skipped {train_set.skipped} unreadable images")
if ddp:
    end_ddp()
