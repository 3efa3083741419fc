# The CPU demo: a tiny TiTok on the built-in synthetic shapes, 64x64 images, 32 tokens.
# python train_tokenizer.py config/shapes_tokenizer.py
out_dir = "out-shapes-tokenizer"
dataset = "shapes"
num_train = 20000
image_size = 64
num_workers = 0
model_size = "tiny"
patch_size = 8
num_latent_tokens = 32
codebook_size = 1024
batch_size = 32
gradient_accumulation_steps = 1
learning_rate = 1e-3
max_iters = 2000
warmup_iters = 100
min_lr = 1e-4
weight_decay = 1e-4
eval_interval = 250
log_interval = 50
