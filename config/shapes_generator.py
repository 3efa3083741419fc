# The CPU demo: a small MaskGIT on the codes of the demo tokenizer (run config/shapes_tokenizer.py first).
# python train_generator.py config/shapes_generator.py, then python sample.py --generator=out-shapes-generator
out_dir = "out-shapes-generator"
tokenizer = "out-shapes-tokenizer"
num_train = 10000  # the first half of the tokenizer's images (and their flips): tokenizing all would double that step
tokenize_batch_size = 256
num_workers = 0
hidden_size = 192
depth = 4
heads = 4
mlp_dim = 768
# every choice below is measured in EXPERIMENTS.md, "Generator settings"
codebook_init = True  # similar codes start with similar embeddings and logits
batch_size = 64  # more samples in their class than batch 32
gradient_accumulation_steps = 1
learning_rate = 2e-3  # a short run: the higher rate learns faster
dropout = 0.0  # a short run underfits; dropout only slows it
max_iters = 2000  # 3,000 put 4-9 more points of samples in their class, and the demo near its 10 minutes
warmup_iters = 100
min_lr = 1e-4
eval_interval = 1000
log_interval = 100
eval_batches = 4  # 128 held-out sequences
# a small, briefly trained model samples best with less noise and more guidance than the released L-32 generator,
# ramped linearly (measured with a shape classifier)
randomize_temperature = 1.0
guidance_decay = "linear"
guidance_scale = 15.0
compile = False  # on a CPU, compiling costs more than it saves
