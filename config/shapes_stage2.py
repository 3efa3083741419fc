# Stage 2 of the two-stage CPU demo: the stage-1 model's encoder and quantizer stay frozen; its decoder
# and the 2D teacher's decoder are finetuned on pixels (L2, then also a small patch-GAN).
# python train_two_stage.py config/shapes_stage2.py   (after config/shapes_stage1.py)
out_dir = "out-shapes-stage2"
stage = 2
teacher = "out-shapes-tokenizer-2d"
stage1_ckpt = "out-shapes-stage1"
# the model settings must be stage 1's (checked)
dataset = "shapes"
num_train = 20000
image_size = 64
num_workers = 0
model_size = "tiny"
patch_size = 16
num_latent_tokens = 16
codebook_size = 1024
dead_code_restart = True
usage_window = 20
batch_size = 32
gradient_accumulation_steps = 1
learning_rate = 5e-4
max_iters = 400
warmup_iters = 50
min_lr = 5e-5
weight_decay = 1e-4
beta2 = 0.999  # the paper's stage 2
ema_decay = 0.99  # averages over ~100 steps: 0.999 would still be mostly stage 1's weights after 400
gan_start_iter = 200
disc_width = 32
disc_stages = 2  # 64x64 images -> 16x16 patch logits
eval_interval = 200
log_interval = 50
