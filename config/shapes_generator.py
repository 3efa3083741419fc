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
batch_size = 64
gradient_accumulation_steps = 1
learning_rate = 2e-3  # with dropout 0: held-out loss 7.22 after 800 steps, against 7.52 for 1e-3 with dropout 0.1
dropout = 0.0  # a short run underfits; dropout only slows it
max_iters = 800
warmup_iters = 50
min_lr = 1e-4
eval_interval = 200
log_interval = 25
eval_batches = 2
# a small, briefly trained model samples best with less noise and guidance than the ImageNet defaults
randomize_temperature = 2.0
guidance_scale = 3.0
