# Stage 2 of the two-stage CPU demo: the stage-1 model's encoder and quantizer stay frozen; its decoder
# and the 2D teacher's decoder are finetuned on pixels (L2, then also the patch-GAN; no perceptual term: it
# needs weight files a CPU box does not have).
# python train_tokenizer.py config/shapes_stage2.py   (after python -m two_stage.train_stage1 config/shapes_stage1.py)
out_dir = "out-shapes-stage2"
init_from = "out-shapes-stage1"  # the model is stage 1's (its checkpoint's model_args)
teacher = "out-shapes-tokenizer-2d"
dataset = "shapes"
num_train = 20000
num_workers = 0
perceptual_weight = 0.0
discriminator_start = 200
discriminator_weight = 0.01  # the official stage 2's
disc_width = 32
disc_stages = 2  # 64x64 images -> 16x16 patch logits
quantizer_weight = 0.0  # the quantizer is frozen
ema_decay = 0.99  # averages over ~100 steps: 0.999 would still be mostly stage 1's weights after 400
batch_size = 32
gradient_accumulation_steps = 1
learning_rate = 5e-4
max_iters = 400
warmup_iters = 50
min_lr = 5e-5
weight_decay = 1e-4
beta2 = 0.999  # the paper's stage 2
eval_interval = 200
log_interval = 50
compile = False  # on a CPU, compiling costs more than it saves
