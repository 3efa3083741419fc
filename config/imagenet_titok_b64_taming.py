# The paper's Tab. 3c row "Taming-VQGAN training setting": TiTok-B-64 trained in a single stage on pixels with
# the typical VQGAN recipe (paper: rFID 5.15, against 15.58 for its 2D variant: add --layout=2d). The paper names
# the setting without its numbers: these are Taming-VQGAN's (configs/imagenet_vqgan.yaml, VQLPIPSWithDiscriminator):
# L1 + 1.0 x LPIPS, the GAN (weight 0.8) from step 250,001, codebook weight 1.0; with the official discriminator
# and a fixed GAN weight (Taming scales it adaptively by the ratio of gradient norms, not implemented here).
#   torchrun --standalone --nproc_per_node=8 train_tokenizer.py config/imagenet_titok_b64_taming.py --dataset=/data/imagenet \
#       --vgg16_weights=vgg16-397923af.pth --lpips_weights=vgg.pth
# Not run here (no GPU, no ImageNet).
out_dir = "out-titok-b64-taming"
dataset = "data/imagenet"
image_size = 256
model_size = "B"
patch_size = 16
num_latent_tokens = 64
codebook_size = 4096
token_size = 12
use_l2_norm = True
recon_loss = "l1"
perceptual_loss = "lpips"
perceptual_weight = 1.0
discriminator_start = 250_001
discriminator_weight = 0.8
lecam_weight = 0.0
quantizer_weight = 1.0
ema_decay = 0.0  # Taming keeps no moving average
batch_size = 32
gradient_accumulation_steps = 8
learning_rate = 1e-4
weight_decay = 1e-4
beta1, beta2 = 0.5, 0.9  # Taming's Adam betas
max_iters = 1_000_000
warmup_iters = 10_000
min_lr = 1e-5
grad_clip = 1.0
eval_interval = 50_000
log_interval = 50
random_crop = True  # the official recipe's training crop
