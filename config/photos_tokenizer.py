# Train a tokenizer on your own photographs, on a CPU in ~10 minutes:
#   python train_tokenizer.py config/photos_tokenizer.py --dataset=<folder of images>
#   python -m aids.refit --tokenizer=out-photos-tokenizer   # then the codebook refit (aids: +0.23 dB on `pair`)
# The folder: root/<image>, root/<class>/<image>, or root/train + root/val. Images are resized (short
# side) and center-cropped to 64x64. Held-out PSNR against what the same bits buy with no learning:
# README, "Training on your own images"; every choice below is measured in EXPERIMENTS.md, "Own photographs".
out_dir = "out-photos-tokenizer"
dataset = ""  # required: --dataset=<folder>
image_size = 64
num_workers = 0
brightness_shift = 0.08  # each training image brighter or darker by up to 0.08: flat held-out crops of shades the
# training crops lack otherwise fall between codes fit to those (+0.43 dB on `pair`, EXPERIMENTS.md)
saturation_shift = 0.5  # ... and its colours' distance from grey scaled by 0.5-1.5: held-out sky is greyer than the
# training sky (+0.11 dB on `pair`); grey photos stay grey
model_size = "tiny"
patch_size = 16
num_latent_tokens = 32
routing_init = True  # without it a model this small learns only the mean image for ~1,500 steps
head_upsample = 4  # a 4x4 colour grid per 16-px patch, upsampled bilinearly: no flat squares
conv_out_padding = "replicate"  # zero padding tints the border: its pixels had 2.7-4.6x the error on flat crops
codebook_size = 32768  # 15 bits a token: held-out tokens land nearer a code (+0.13 dB on `pair` over 16,384), ~10%
# more time; 65,536 cost 1.4-2x the time a step on a CPU
dead_code_restart = True  # a small tokenizer briefly trained otherwise leaves most codes unused
usage_window = 20
# pixels only: the perceptual terms need weight files a CPU box does not have (docs/recipes.md); its
# numbers are measured without the GAN and the moving average of the weights too
perceptual_weight = 0.0
discriminator_weight = 0.0
ema_decay = 0.0
batch_size = 32
gradient_accumulation_steps = 1
learning_rate = 2e-3  # with dead-code restart, faster than 1e-3
max_iters = 1500
warmup_iters = 100
min_lr = 2e-5  # 10x lower than 2e-4: +0.17 dB, most of it on the flattest crops
weight_decay = 1e-4
beta2 = 0.99
eval_interval = 500
eval_batches = 6
log_interval = 100
compile = False  # on a CPU, compiling costs more than it saves
