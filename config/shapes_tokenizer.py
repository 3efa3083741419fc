# The CPU demo: a tiny TiTok on the built-in synthetic shapes, 64x64 images, 32 tokens (~8.5 min on 2 cores).
# python train_tokenizer.py config/shapes_tokenizer.py
out_dir = "out-shapes-tokenizer"
dataset = "shapes"
num_train = 20000
image_size = 64
num_workers = 0
cache_images = True  # each image is drawn once, not at every epoch (1 GB; drawing is a fifth of a step)
model_size = "tiny"
patch_size = 16  # a 4x4 grid: half the sequence of 8x8 patches, twice the images per second on a CPU
num_latent_tokens = 32
# start the latents routed like a 2D tokenizer's tokens: with the default init a model this small
# learns only the mean image for ~1,500 steps and ends at ~17 dB (EXPERIMENTS.md, "The routing init")
routing_init = True
# 1,024 codes: 0.4 dB under 4,096 on this data, and a 4x smaller output layer for the generator,
# whose steps are then ~1.3x faster (EXPERIMENTS.md, "The CPU demo")
codebook_size = 1024
# a small tokenizer trained briefly otherwise maps every image to the same codes for hundreds of steps
dead_code_restart = True
usage_window = 20
batch_size = 32
gradient_accumulation_steps = 1
learning_rate = 2e-3  # measured on this data; config/photos_tokenizer.py uses the same on real photos
max_iters = 3000
warmup_iters = 100
min_lr = 2e-4
weight_decay = 1e-4
eval_interval = 500
log_interval = 100
