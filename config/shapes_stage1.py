# Stage 1 of the two-stage CPU demo: a tiny 1D TiTok (K = 16) learns to predict, per patch, the codes that
# the 2D tokenizer of config/shapes_tokenizer_2d.py (run it first) gives each training image
# (train that teacher first, with train_tokenizer.py).
# python -m two_stage.train_stage1 config/shapes_stage1.py, then python train_tokenizer.py config/shapes_stage2.py
out_dir = "out-shapes-stage1"
teacher = "out-shapes-tokenizer-2d"
dataset = "shapes"
num_train = 20000
image_size = 64
num_workers = 0
model_size = "tiny"
patch_size = 16  # the teacher's 4x4 grid
num_latent_tokens = 16  # as many tokens as the 2D teacher: the 1D-vs-2D comparison of EXPERIMENTS.md
codebook_size = 1024
dead_code_restart = True
usage_window = 20
batch_size = 32
gradient_accumulation_steps = 1
learning_rate = 1e-3
max_iters = 600
warmup_iters = 100
min_lr = 1e-4
weight_decay = 1e-4
eval_interval = 200
log_interval = 50
compile = False  # on a CPU, compiling costs more than it saves
