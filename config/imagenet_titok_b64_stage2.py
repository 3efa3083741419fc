# TiTok-B-64, stage 2 of the paper's two-stage recipe on ImageNet 256 (paper: rFID 1.70), after
# config/imagenet_titok_b64_stage1.py. Encoder, quantizer and codes stay frozen; the decoder and the
# MaskGIT-VQGAN's decoder (softmax(logits) . its codebook -> its decoder) are finetuned on pixels.
#   torchrun --standalone --nproc_per_node=8 train_two_stage.py config/imagenet_titok_b64_stage2.py --dataset=/data/imagenet
# The official recipe adds perceptual terms (LPIPS, ConvNeXt-S features, weight 0.1) that need weights we do
# not ship; --perceptual_weight=0.1 --perceptual_weights=pt_inception-2015-12-05-6726825d.pth adds our
# stand-in (FID-Inception features). Without it the recipe runs as is, with less sharp results.
out_dir = "out-titok-b64-stage2"
stage = 2
stage1_ckpt = "out-titok-b64-stage1"
teacher = "maskgit-vqgan-imagenet-f16-256.bin"
dataset = "data/imagenet"
# the model: stage 1's (checked)
image_size = 256
model_size = "B"
patch_size = 16
num_latent_tokens = 64
codebook_size = 4096
token_size = 12
batch_size = 32
gradient_accumulation_steps = 8  # 256 images per step
learning_rate = 1e-4
weight_decay = 1e-4
beta2 = 0.999
max_iters = 500_000  # 100 epochs
warmup_iters = 5_000
min_lr = 1e-5
grad_clip = 1.0
ema_decay = 0.999
gan_weight = 0.01
gan_start_iter = 20_000
disc_learning_rate = 1e-4
disc_width = 128
disc_stages = 3
lecam_weight = 0.001
eval_interval = 50_000
log_interval = 50
