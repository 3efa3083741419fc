# The 2D baseline on the synthetic shapes, and the teacher of the two-stage CPU demo: the same tiny ViTs
# as config/shapes_tokenizer.py, but the 4x4 patch tokens are the codes (16 tokens, one per 16x16 patch).
# python train_tokenizer.py config/shapes_tokenizer_2d.py
# The 1D tokenizer at the same token count: add --layout=1d --num_latent_tokens=16 --out_dir=out-shapes-1d16
out_dir = "out-shapes-tokenizer-2d"
dataset = "shapes"
num_train = 20000
image_size = 64
num_workers = 0
model_size = "tiny"
patch_size = 16
layout = "2d"
num_latent_tokens = 16  # read by --layout=1d only; the 2D layout has (64 / 16)^2 = 16 tokens
codebook_size = 1024
dead_code_restart = True  # as in config/shapes_tokenizer.py: a short run otherwise collapses the codebook
usage_window = 20
# pixels only: the perceptual terms need weight files a CPU box does not have (docs/recipes.md); its
# numbers are measured without the GAN and the moving average of the weights too
perceptual_weight = 0.0
discriminator_weight = 0.0
ema_decay = 0.0
batch_size = 32
gradient_accumulation_steps = 1
learning_rate = 1e-3
max_iters = 1000
warmup_iters = 100
min_lr = 1e-4
weight_decay = 1e-4
beta2 = 0.99
eval_interval = 250
log_interval = 50
compile = False  # on a CPU, compiling costs more than it saves
