#!/usr/bin/env bash
# The first call of a session with a GPU, from the repository root: within GPU_CHECK_BUDGET seconds (default 460,
# under 8 minutes on one H100/H200), most important first, each command cut off when the budget runs out:
#   1. 30 steps of the BL-64 recipe (config/imagenet_titok_bl64_vq8k.py: every loss term, perceptual nets with
#      random weights, the GAN from step 10) on synthetic 256-px images, torch.compile + bf16, with TORCH_LOGS
#      counting graph breaks and recompiles;
#   2. bench.py at L-32 (compiled): the recipe's whole tokenizer step, a generator step, decoding, sampling;
#   3. a small generator trained 10 steps on the BL-64 checkpoint, 256 samples from it, their FID against 256 real
#      synthetic images (an Inception with seeded random weights: the real file is not on the machine);
#   4. bench.py at B-64 and S-128, eager (compiling them too would not fit the budget).
# Installs nothing, downloads nothing: it uses the python on PATH. Figures go to $OUT/gpu_check.txt if $OUT is set,
# else ./gpu_check.txt; each command's whole output to gpu_check_logs/ beside it; checkpoints to a temporary folder.
# GPU_CHECK_DRY=1: the same commands and flags on the CPU at toy sizes, to check that every command line parses.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=${GPU_CHECK_DRY:-0}
BUDGET=${GPU_CHECK_BUDGET:-460}
DEST=${OUT:-.}
REPORT=$DEST/gpu_check.txt
LOGS=$DEST/gpu_check_logs
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$LOGS"
: > "$REPORT"
START=$(date +%s)
DEADLINE=$(( START + BUDGET ))
GLOG='^(\[rank[0-9]+\]:)?[VIWEC][0-9]{4} [0-9:]{8}\.[0-9]{6} '  # the prefix of TORCH_LOGS lines

say() { echo "$*" | tee -a "$REPORT"; }

# run NAME LIMIT COMMAND...: at most LIMIT seconds, within the budget; the report gets its status, dynamo's findings
run() {
    local name=$1 limit=$2 left start status log=$LOGS/$1.log
    shift 2
    left=$(( DEADLINE - $(date +%s) ))
    (( limit > left )) && limit=$left
    say ""
    say "\$ $*"
    if (( limit < 15 )); then
        say "skipped: the budget of ${BUDGET} s is spent"
        return
    fi
    start=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" > "$log" 2>&1
    status=$?
    if (( status == 124 || status == 137 )); then
        say "TIMED OUT after $(( $(date +%s) - start )) s (limit ${limit} s)"
    else
        say "exit status ${status}, $(( $(date +%s) - start )) s"
    fi
    local breaks recompiles
    breaks=$(grep -c '\[__graph_breaks\] Graph break' "$log")
    recompiles=$(grep -c '\[__recompiles\] Recompiling function' "$log")
    if (( breaks + recompiles > 0 )); then
        say "graph breaks: ${breaks}, recompiles: ${recompiles}"
        grep -E '\[__graph_breaks\] +(Graph break|Graph Break Reason|Explanation)|\[__recompiles\] +(Recompiling|- )' "$log" \
            | sed -E "s/${GLOG}[^]]*\] *(\[[0-9/]+\] )?//" | sort | uniq -c | sort -rn | head -n 20 | tee -a "$REPORT"
    fi
    grep -vE "$GLOG" "$log" | tail -n 25 | tee -a "$REPORT"
}

if [[ $DRY == 1 ]]; then  # toy sizes on the CPU: the flags are the point
    DEVICE=cpu PRESETS=(micro micro micro) IMAGE=32 COMPILE=False
    BENCH_ITERS=(--warmup_iters=1 --bench_iters=1 --repeats=1)
    TOKENIZER=(--model_size=micro --decoder_size=micro --batch_size=2 --gradient_accumulation_steps=1 --num_train=64
               --max_iters=3 --eval_interval=3 --log_interval=1 --discriminator_start=1 --eval_batches=1 --num_workers=0)
    GENERATOR=(--hidden_size=32 --depth=1 --heads=2 --mlp_dim=64 --batch_size=4 --gradient_accumulation_steps=1
               --max_iters=2 --eval_interval=2 --log_interval=1 --eval_batches=1 --tokenize_batch_size=16 --num_workers=0)
    SAMPLES=(--classes=0,1 --samples_per_class=2 --batch_size=4)
    FID=(--batch_size=4 --workers=0)
    NUM_REAL=4
else
    DEVICE=cuda PRESETS=(L-32 B-64 S-128) IMAGE=256 COMPILE=True
    BENCH_ITERS=(--warmup_iters=3 --bench_iters=3 --repeats=1)
    # the recipe's micro-batch, two micro-steps a step rather than eight: the speed per image is the same
    TOKENIZER=(--gradient_accumulation_steps=2 --num_train=2048 --max_iters=30 --eval_interval=30 --log_interval=10
               --discriminator_start=10)
    GENERATOR=(--hidden_size=256 --depth=4 --heads=4 --mlp_dim=1024 --gradient_accumulation_steps=4 --max_iters=10
               --eval_interval=10 --log_interval=5)
    SAMPLES=(--classes=0,1,2,3,4,5,6,7 --samples_per_class=32 --batch_size=128)
    FID=(--batch_size=128)
    NUM_REAL=256
fi
WORKLOADS=--workloads=tokenizer_recipe,generator_train,decode,sample

say "gpu_check $(date -u '+%Y-%m-%d %H:%M:%S UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
say "$(python -c 'import torch; print("torch", torch.__version__, "|", torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device")' 2>&1)"
command -v nvidia-smi > /dev/null && say "$(nvidia-smi --query-gpu=name,memory.total,driver_version,power.limit --format=csv,noheader)"
say "budget ${BUDGET} s, dry run ${DRY}, device ${DEVICE}"

# weight files with seeded random weights, in the layouts of the real ones; and real images for the FID
run setup 60 python - "$WORK" "$IMAGE" "$NUM_REAL" <<'EOF'
import math, sys
import numpy as np, torch
from data import make_dataset
from fid import InceptionV3
from losses import CHANNELS, ConvNeXtSmall, VGG16Features
work, size, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
torch.save(VGG16Features().state_dict(), f"{work}/vgg16-397923af.pth")
torch.save({f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) / c ** 0.5 for i, c in enumerate(CHANNELS)}, f"{work}/vgg.pth")
torch.save(ConvNeXtSmall().state_dict(), f"{work}/convnext_small-0c510722.pth")
inception = InceptionV3().state_dict()
for k, v in inception.items():  # He-scaled convolutions: the features neither vanish nor blow up
    if k.endswith("conv.weight"):
        v.normal_(0, math.sqrt(2 / v[0].numel()))
torch.save(inception, f"{work}/inception_random.pth")
real = make_dataset("shapes", size, "val", n, 1)
images = torch.stack([real[i][0] for i in range(n)])
np.savez(f"{work}/real.npz", arr_0=images.mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
print(f"random weights and {n} real {size}-px images in {work}")
EOF

run tokenizer_bl64 140 env TORCH_LOGS=graph_breaks,recompiles python train_tokenizer.py config/imagenet_titok_bl64_vq8k.py \
    --dataset=shapes --image_size="$IMAGE" "${TOKENIZER[@]}" --device="$DEVICE" --compile=True --dtype=bfloat16 \
    --vgg16_weights="$WORK/vgg16-397923af.pth" --lpips_weights="$WORK/vgg.pth" \
    --convnext_weights="$WORK/convnext_small-0c510722.pth" --out_dir="$WORK/tokenizer"

run "bench_1_${PRESETS[0]}" 110 env TORCH_LOGS=graph_breaks,recompiles python -m tools.bench --preset="${PRESETS[0]}" \
    "$WORKLOADS" "${BENCH_ITERS[@]}" --device="$DEVICE" --dtype=bfloat16 --compile="$COMPILE"

if [[ -f $WORK/tokenizer/ckpt.pt ]]; then
    run generator 45 env TORCH_LOGS=graph_breaks,recompiles python train_generator.py --tokenizer="$WORK/tokenizer" \
        "${GENERATOR[@]}" --device="$DEVICE" --compile=True --dtype=bfloat16 --out_dir="$WORK/generator"
    run sample 50 env TORCH_LOGS=graph_breaks,recompiles python sample.py --generator="$WORK/generator" "${SAMPLES[@]}" \
        --device="$DEVICE" --compile=True --dtype=bfloat16 --out="$WORK/samples"
    run fid 30 python fid.py "$WORK/samples.npz" "$WORK/real.npz" --weights="$WORK/inception_random.pth" "${FID[@]}" \
        --device="$DEVICE"
    cp "$WORK/samples.png" "$LOGS/" 2> /dev/null
else
    say ""
    say "skipped the generator, sampling and FID: the BL-64 run left no checkpoint"
fi

for i in 1 2; do
    run "bench_$(( i + 1 ))_${PRESETS[i]}" 35 python -m tools.bench --preset="${PRESETS[i]}" "$WORKLOADS" "${BENCH_ITERS[@]}" \
        --device="$DEVICE" --dtype=bfloat16 --compile=False
done
say ""
say "done in $(( $(date +%s) - START )) s; whole outputs in ${LOGS}"
