# The CPU demo: the paper's TiTok (model.TiTok), tiny, on the built-in synthetic shapes, 32x32 images, 12 tokens
# (README, "The demo: what you will see").
# python train_tokenizer.py config/shapes_tokenizer.py
# Every choice below is measured in EXPERIMENTS.md ("The CPU demo", "The routing init: why a small 1D tokenizer is slow to start", "The 1D regime").
out_dir = "out-shapes-tokenizer"
dataset = "shapes"
num_train = 20000
image_size = 32  # at 64 px the paper's pixel head (p*p values per patch from a 128-dim output) writes flat squares
num_workers = 0
cache_images = True  # each image is drawn once, not at every epoch: drawing is a noticeable share of a step
model_size = "tiny"
patch_size = 8  # a 4x4 grid: 16 patches, 192 pixel values each
num_latent_tokens = 12  # fewer tokens than the 16 patches: the paper's regime, where a token cannot be one patch
# a small-budget aid that only initialises (aids/routing.py, not in the paper): without it a model this small learns
# only the mean image for its first ~1,500 steps; scattered, each latent starts reading four patches that lie apart
routing_init = True
routing_scatter = True
codebook_size = 1024  # as good as 4,096 here, and codes a small generator learns better
dead_code_restart = True  # a briefly trained small tokenizer otherwise leaves most codes unused
usage_window = 20
# pixels only: the perceptual terms need weight files a CPU box does not have (docs/recipes.md); its
# numbers are measured without the GAN and the moving average of the weights too
perceptual_weight = 0.0
discriminator_weight = 0.0
ema_decay = 0.0
batch_size = 32
gradient_accumulation_steps = 1
learning_rate = 2e-3  # measured on this data; config/photos_tokenizer.py uses the same on real photos
max_iters = 3000  # more steps keep paying: at 3,000 both seeds tried clear the demo's bounds with room (EXPERIMENTS.md)
warmup_iters = 100
min_lr = 2e-4
weight_decay = 1e-4
beta2 = 0.99
eval_interval = 500
log_interval = 100
compile = False  # on a CPU, compiling costs more than it saves
