# The CPU demo: a tiny TiTok on the built-in synthetic shapes, 64x64 images, 32 tokens (~10 min on 2 cores).
# python train_tokenizer.py config/shapes_tokenizer.py
out_dir = "out-shapes-tokenizer"
dataset = "shapes"
num_train = 20000
image_size = 64
num_workers = 0
model_size = "tiny"
patch_size = 16  # a 4x4 grid: half the sequence of 8x8 patches, twice the images per second on a CPU
num_latent_tokens = 32
codebook_size = 1024
# a small tokenizer trained briefly otherwise maps every image to the same codes for hundreds of steps
dead_code_restart = True
usage_window = 20
batch_size = 32
gradient_accumulation_steps = 1
learning_rate = 1e-3  # 3e-3 collapses the codebook (measured)
max_iters = 3500
warmup_iters = 100
min_lr = 1e-4
weight_decay = 1e-4
eval_interval = 500
log_interval = 100
