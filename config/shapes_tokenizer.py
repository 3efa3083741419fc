# The CPU demo: a tiny TiTok on the built-in synthetic shapes, 64x64 images, 12 tokens (~6.5 min on 2 cores).
# python train_tokenizer.py config/shapes_tokenizer.py
out_dir = "out-shapes-tokenizer"
dataset = "shapes"
num_train = 20000
image_size = 64
num_workers = 0
cache_images = True  # each image is drawn once, not at every epoch (1 GB; drawing is a fifth of a step)
model_size = "tiny"
patch_size = 16  # a 4x4 grid: half the sequence of 8x8 patches, twice the images per second on a CPU
# K = 12 tokens for 16 patches: fewer tokens than patches, the paper's regime, where a token cannot be one patch
num_latent_tokens = 12
# start the latents routed: with the default init a model this small learns only the mean image for ~1,500
# steps and ends at ~17 dB (EXPERIMENTS.md, "The routing init"); scattered, each latent starts reading one
# patch per head, four patches that lie apart, so its token acts across the image, not on one place
# (EXPERIMENTS.md, "The 1D regime on the demo")
routing_init = True
routing_scatter = True
head_stride = 4  # a 4x4 colour grid per 16-px patch, upsampled: +3 dB at step 1,000 (EXPERIMENTS.md)
# 1,024 codes: the same PSNR as 4,096 here (22.82 against 22.79 dB), and codes a generator learns: 40% of
# samples in their class against 27% (EXPERIMENTS.md, "The CPU demo")
codebook_size = 1024
dead_code_restart = True
usage_window = 20
# pixels only: the perceptual terms need weight files a CPU box does not have (README, "Training recipes"); its
# numbers are measured without the GAN and the moving average of the weights too
perceptual_weight = 0.0
discriminator_weight = 0.0
ema_decay = 0.0
batch_size = 32
gradient_accumulation_steps = 1
learning_rate = 2e-3  # measured on this data; config/photos_tokenizer.py uses the same on real photos
max_iters = 2000  # 6,000: 24.1 dB and 61.5% of samples in class, but a 21.5-min demo (EXPERIMENTS.md, "The CPU demo")
warmup_iters = 100
min_lr = 2e-4
weight_decay = 1e-4
beta2 = 0.99
eval_interval = 500
log_interval = 100
