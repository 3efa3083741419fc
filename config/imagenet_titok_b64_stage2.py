# TiTok-B-64, stage 2 of the paper's two-stage recipe on ImageNet 256 (paper: rFID 1.70), after
# config/imagenet_titok_b64_stage1.py: the official stage 2 (configs/training/TiTok/stage2/titok_b64.yaml).
# Encoder, quantizer and codes stay frozen; the decoder and the MaskGIT-VQGAN's decoder (softmax(logits) . its
# codebook -> its decoder) are finetuned on pixels: L2 + 0.1 x ConvNeXt-S + a patch-GAN from step 20k.
#   torchrun --standalone --nproc_per_node=8 train_tokenizer.py config/imagenet_titok_b64_stage2.py --dataset=/data/imagenet \
#       --convnext_weights=convnext_small-0c510722.pth
# The model is stage 1's (its checkpoint's model_args); not run here (no GPU, no ImageNet).
out_dir = "out-titok-b64-stage2"
init_from = "out-titok-b64-stage1"
teacher = "maskgit-vqgan-imagenet-f16-256.bin"
dataset = "data/imagenet"
perceptual_loss = "convnext_s"
perceptual_weight = 0.1
discriminator_start = 20_000
discriminator_weight = 0.01
lecam_weight = 0.001
disc_learning_rate = 1e-4
quantizer_weight = 0.0  # the quantizer is frozen
ema_decay = 0.999
batch_size = 32
gradient_accumulation_steps = 8  # 256 images per step, divided between the processes
learning_rate = 1e-4
weight_decay = 1e-4
beta2 = 0.999
max_iters = 500_000  # 100 epochs
warmup_iters = 5_000
min_lr = 1e-5
grad_clip = 1.0
eval_interval = 50_000
log_interval = 50
random_crop = True  # the official recipe's training crop
