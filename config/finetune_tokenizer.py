# Fine-tune a trained or released TiTok on your own images (docs/recipes.md, "Fine-tuning a released model"):
#   python train_tokenizer.py config/finetune_tokenizer.py --init_from=tokenizer_titok_bl64_vq8k_imagenet --dataset=<folder>
# The model, and so the image size, is init_from's. The loss is the official single-stage recipe's (its weight
# files: docs/recipes.md), the discriminator new and started once the average of the weights has settled.
# --freeze=encoder keeps every image's codes (and so a generator trained on them); by default everything trains.
# Not measured here (no GPU): the values are a starting point.
out_dir = "out-finetune-tokenizer"
dataset = ""  # required: --dataset=<folder>
random_crop = True
learning_rate = 1e-5  # a tenth of the recipe's: the weights are trained already
min_lr = 1e-6
warmup_iters = 500
max_iters = 20_000
discriminator_start = 2_000
eval_interval = 2_000
log_interval = 50
