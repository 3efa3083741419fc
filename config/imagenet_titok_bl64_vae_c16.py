# TiTok-BL-64 VAE (yucornetto/tokenizer_titok_bl64_vae_c16_imagenet, official rFID 1.25) in one stage on
# ImageNet 256. Everything else is train_tokenizer.py's defaults, the official single-stage recipe
# (configs/training/TA-TiTok/*.yaml, losses.py ReconstructionLoss_Single_Stage): L2 + 1.1 x LPIPS/ConvNeXt-S,
# the GAN from 200k, EMA 0.999, batch 256 (32 x 8), lr 1e-4, 1M steps (the maintainers, 1d-tokenizer #67).
#   torchrun --standalone --nproc_per_node=8 train_tokenizer.py config/imagenet_titok_bl64_vae_c16.py --dataset=/data/imagenet \
#       --vgg16_weights=vgg16-397923af.pth --lpips_weights=vgg.pth --convnext_weights=convnext_small-0c510722.pth
# Not run here (no GPU, no ImageNet): its rFID is not measured.
out_dir = "out-titok-bl64_vae_c16"
dataset = "data/imagenet"
model_size = "B"  # the encoder
decoder_size = "L"
num_latent_tokens = 64
quantize_mode = "vae"
token_size = 16  # continuous tokens: a mean and a log-variance each
eval_interval = 50_000
log_interval = 50
random_crop = True  # the official recipe's training crop
