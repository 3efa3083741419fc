# TiTok-BL-64 VQ (yucornetto/tokenizer_titok_bl64_vq8k_imagenet, official rFID 2.06) in one stage on
# ImageNet 256: the official single-stage recipe (configs/training/TA-TiTok/tatitok_bl64_vq.yaml, losses.py
# ReconstructionLoss_Single_Stage) on ImageNet, batch 256 for 1M steps (the maintainers, 1d-tokenizer #67).
#   torchrun --standalone --nproc_per_node=8 train_tokenizer.py config/imagenet_titok_bl64_vq8k.py --dataset=/data/imagenet \
#       --vgg16_weights=vgg16-397923af.pth --lpips_weights=vgg.pth --convnext_weights=convnext_small-0c510722.pth
# Not run here (no GPU, no ImageNet): its rFID is not measured.
out_dir = "out-titok-bl64_vq8k"
dataset = "data/imagenet"
image_size = 256
model_size = "B"  # the encoder
decoder_size = "L"
patch_size = 16
num_latent_tokens = 64
quantize_mode = "vq"
codebook_size = 8192
token_size = 64
use_l2_norm = False  # raw vectors, nearest by squared distance
commitment_cost = 0.25
quantizer_weight = 1.0
clustering_vq = True
recon_loss = "l2"
perceptual_loss = "lpips-convnext_s-1.0-0.1"
perceptual_weight = 1.1
discriminator_start = 200_000
discriminator_weight = 0.1
lecam_weight = 0.001
disc_learning_rate = 1e-4
ema_decay = 0.999
batch_size = 32
gradient_accumulation_steps = 8  # 256 images per step, divided between the processes
learning_rate = 1e-4
weight_decay = 1e-4
beta1, beta2 = 0.9, 0.999
max_iters = 1_000_000
warmup_iters = 10_000
min_lr = 1e-5
grad_clip = 1.0
eval_interval = 50_000
log_interval = 50
