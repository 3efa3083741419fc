# TiTok-L-32, stage 1 of the paper's two-stage recipe on ImageNet 256 (paper: rFID 2.21 after stage 2).
# The decoder learns to predict the MaskGIT-VQGAN's 16x16 codes (proxy codes) of each image.
#   torchrun --standalone --nproc_per_node=8 -m two_stage.train_stage1 config/imagenet_titok_l32_stage1.py --dataset=/data/imagenet
# then config/imagenet_titok_l32_stage2.py (train_tokenizer.py). The teacher is maskgit-vqgan-imagenet-f16-256.bin from
# https://huggingface.co/fun-research/TiTok: download it into the working directory or pass --teacher=PATH.
out_dir = "out-titok-l32-stage1"
teacher = "maskgit-vqgan-imagenet-f16-256.bin"
dataset = "data/imagenet"
image_size = 256
model_size = "L"
patch_size = 16
num_latent_tokens = 32
codebook_size = 4096  # x token_size 12, l2-normalised
token_size = 12
quantizer_weight = 1.0
batch_size = 32
gradient_accumulation_steps = 8  # 256 images per step, divided between the processes
learning_rate = 1e-4
weight_decay = 1e-4
beta2 = 0.99
max_iters = 1_000_000  # 200 epochs of ImageNet's 1.28M images at batch 256
warmup_iters = 10_000
min_lr = 1e-5
grad_clip = 1.0
eval_interval = 50_000
log_interval = 50
