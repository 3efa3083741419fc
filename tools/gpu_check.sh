#!/usr/bin/env bash
# The first call of a session with a GPU: `bash tools/gpu_check.sh` from the repository root, one command of the
# device tool (at most 600 s), within GPU_CHECK_BUDGET seconds (default 560), most important first:
#   0. preflight, ~5 s: python's torch must see a CUDA device, else one line and exit status 2;
#   1. seeded random weights in the layouts of VGG16, LPIPS, ConvNeXt-S and the FID Inception (the real files are not
#      on the machine), and 256 real synthetic 256-px images for the FID;
#   2. 20 steps of the BL-64 recipe (config/imagenet_titok_bl64_vq8k.py: every loss term, the GAN from step 5) on
#      synthetic 256-px images under torchrun --nproc_per_node=1 (NCCL, DDP and its bucketed graph split), compiled,
#      bf16, a checkpoint at step 10 (then at 20); the trainer prints the peak memory and the first iterations'
#      seconds (compilation in them), TORCH_LOGS the graph breaks and recompiles;
#   3. a small generator trained 10 steps on that checkpoint, 256 samples from it, their FID against the real images;
#   4. bench.py at L-32, compiled (warm-up seconds, peak memory, MFU per workload), then B-64 and S-128 eager.
# Each step's limit is its cold cost with room, capped by what is left of the budget; one that is cut off costs the
# steps after it only its limit. Sized so (an estimate for an H100 with 16 cores: no GPU has run it yet): the cold
# compile of BL-64's forward and backward (ViT-B encoder, ViT-L decoder) costs most: its dynamo and AOT-autograd
# tracing alone took 18 s, 22 s under DDP's split (backend aot_eager, batch 1, on this project's 2-core development
# CPU), inductor's lowering and the Triton kernels take a few times that, DDP's split has inductor compile each
# bucket's subgraph apart: ~150 s; the step gets 300 s with startup, 20 steps (~0.3 s each), two evaluations and
# two ~6 GB checkpoints. A small generator compiles in ~40 s (120); sampling compiles the ViT-L decoder (150); the
# FID is two 2048-dim eigendecompositions on the CPU (90; 30 was too short); the bench gets what is left (~150 s:
# its lines come as each workload ends).
# Figures go to $OUT (else the current directory) as each step ends, so that a later timeout loses nothing before
# it: gpu_check.txt (the report), gpu_check_logs.tar.gz (every step's whole output), gpu_check_samples.png.
# Installs nothing, downloads nothing: python3 on PATH (GPU_CHECK_PYTHON to choose another).
# GPU_CHECK_DRY=1: the same steps and flags on the CPU at toy sizes, eager (compiling is tests/test_compile.py's), in
# under GPU_CHECK_BUDGET (default 240) s: every command line parses and every step prints its figures (those of
# CUDA alone, peak memory and MFU, excepted).
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=${GPU_CHECK_DRY:-0}
PY=${GPU_CHECK_PYTHON:-$(command -v python3 || command -v python)}
DEST=${OUT:-.}
REPORT=$DEST/gpu_check.txt
mkdir -p "$DEST"
START=$(date +%s)

# 0. preflight: without a CUDA torch every step would fail one by one
if ! about=$(timeout 30 "$PY" -c '
import sys, torch
if not torch.cuda.is_available() and sys.argv[1] != "1":
    sys.exit(f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device")
name = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {name}, python {sys.version.split()[0]}")
' "$DRY" 2>&1 | tail -n 1); then
    echo "gpu_check: nothing run: ${about:-$PY did not start}; run it where python3's torch has CUDA (or GPU_CHECK_DRY=1 for the CPU dry run)" \
        | tee "$REPORT" >&2
    exit 2
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/logs"
: > "$REPORT"
GLOG='^(\[rank[0-9]+\]:)?[VIWEC][0-9]{4} [0-9:]{8}\.[0-9]{6} '  # the prefix of TORCH_LOGS lines

say() { echo "$*" | tee -a "$REPORT"; }

# run NAME LIMIT FIGURES COMMAND...: at most LIMIT seconds, within the budget; the report gets its status, dynamo's
# findings and the lines of its output that match FIGURES (all its last lines if it failed); the logs go to $DEST
run() {
    local name=$1 limit=$2 figures=$3 left start status log=$WORK/logs/$1.log
    shift 3
    left=$(( DEADLINE - $(date +%s) ))
    (( limit > left )) && limit=$left
    say ""
    say "\$ $*"
    if (( limit < 10 )); then
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
    grep -vE "$GLOG" "$log" | grep -E "$figures" | tail -n 30 | tee -a "$REPORT"
    if (( status != 0 )); then  # the first error with what led to it (a worker's, under torchrun), then the end
        say "--- the first error:"
        grep -vE "$GLOG" "$log" | grep -m 1 -B 12 -E '^[A-Za-z_.]*(Error|Exception)\b|^error: ' | tee -a "$REPORT"
        say "--- the end:"
        grep -vE "$GLOG" "$log" | tail -n 8 | tee -a "$REPORT"
    fi
    tar -czf "$DEST/gpu_check_logs.tar.gz" -C "$WORK" logs
}

if [[ $DRY == 1 ]]; then  # toy sizes on the CPU, eager: the flags and the figures are the point
    BUDGET=${GPU_CHECK_BUDGET:-240}
    DEVICE=cpu PRESETS=(micro micro micro) IMAGE=32 COMPILE=False NUM_REAL=4
    BENCH_ITERS=(--warmup_iters=1 --bench_iters=1 --repeats=1)
    TOKENIZER=(--model_size=micro --decoder_size=micro --batch_size=2 --gradient_accumulation_steps=2 --num_train=8
               --max_iters=4 --eval_interval=2 --log_interval=1 --discriminator_start=1 --eval_batches=1)
    GENERATOR=(--hidden_size=32 --depth=1 --heads=2 --mlp_dim=64 --batch_size=4 --gradient_accumulation_steps=1
               --max_iters=2 --eval_interval=2 --log_interval=1 --eval_batches=1 --tokenize_batch_size=8 --num_workers=0)
    SAMPLES=(--classes=0,1 --samples_per_class=2 --batch_size=2)
    FID=(--batch_size=4 --workers=0)
else
    BUDGET=${GPU_CHECK_BUDGET:-560}
    DEVICE=cuda PRESETS=(L-32 B-64 S-128) IMAGE=256 COMPILE=True NUM_REAL=256
    BENCH_ITERS=(--warmup_iters=2 --bench_iters=3 --repeats=1)
    # the recipe's micro-batch, two micro-steps a step rather than eight: the speed per image is the same; 256 images
    # rendered once and kept (rendering a 256-px image costs ~20-40 ms of a CPU core: 64 a step on the fly would
    # make the data the bottleneck)
    TOKENIZER=(--gradient_accumulation_steps=2 --num_train=256 --max_iters=20 --eval_interval=10 --log_interval=5
               --discriminator_start=5 --eval_batches=1)
    GENERATOR=(--hidden_size=256 --depth=4 --heads=4 --mlp_dim=1024 --gradient_accumulation_steps=4 --max_iters=10
               --eval_interval=10 --log_interval=5 --eval_batches=1)
    SAMPLES=(--classes=0,1,2,3,4,5,6,7 --samples_per_class=32 --batch_size=128)
    FID=(--batch_size=128)
fi
DEADLINE=$(( START + BUDGET ))
LOGGED=(env TORCH_LOGS=graph_breaks,recompiles)

say "gpu_check $(date -u '+%Y-%m-%d %H:%M:%S UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
say "$about; $(nproc --all) CPU cores"
command -v nvidia-smi > /dev/null && say "$(nvidia-smi --query-gpu=name,memory.total,driver_version,power.limit --format=csv,noheader)"
say "budget ${BUDGET} s, dry run ${DRY}, device ${DEVICE}, preflight $(( $(date +%s) - START )) s"

# 1. weight files with seeded random weights, in the layouts of the real ones; real images for the FID
run setup 90 '^random weights' "$PY" - "$WORK" "$IMAGE" "$NUM_REAL" <<'EOF'
import math, sys
import numpy as np, torch
from data import make_dataset
from fid import InceptionV3
from nets.perceptual import CHANNELS, ConvNeXtSmall, VGG16Features
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
print(f"random weights, and {n} real {size}-px images, in {work}")
EOF

# 2. the recipe under torchrun: NCCL, DDP's buckets and its graph split, compile, bf16, an early checkpoint
run tokenizer_bl64 300 '^(TiTok|held-out|iter|eval|checkpoint)' "${LOGGED[@]}" \
    "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 train_tokenizer.py config/imagenet_titok_bl64_vq8k.py \
    --dataset=shapes --image_size="$IMAGE" "${TOKENIZER[@]}" --num_workers=0 --cache_images=True --device="$DEVICE" \
    --compile="$COMPILE" --dtype=bfloat16 --vgg16_weights="$WORK/vgg16-397923af.pth" --lpips_weights="$WORK/vgg.pth" \
    --convnext_weights="$WORK/convnext_small-0c510722.pth" --out_dir="$WORK/tokenizer"
[[ -f $WORK/tokenizer/ckpt.pt ]] && say "checkpoint: $(du -h "$WORK/tokenizer/ckpt.pt" | cut -f1)"

# 3. generator, samples, FID: on the tokenizer's checkpoint
if [[ -f $WORK/tokenizer/ckpt.pt ]]; then
    run generator 120 '^(MaskGIT|tokeniz|iter|eval)' "${LOGGED[@]}" "$PY" train_generator.py --tokenizer="$WORK/tokenizer" \
        "${GENERATOR[@]}" --device="$DEVICE" --compile="$COMPILE" --dtype=bfloat16 --out_dir="$WORK/generator"
    run sample 150 '^(sampling|generated|wrote)' "${LOGGED[@]}" "$PY" sample.py --generator="$WORK/generator" "${SAMPLES[@]}" \
        --device="$DEVICE" --compile="$COMPILE" --dtype=bfloat16 --out="$WORK/samples"
    cp "$WORK/samples.png" "$DEST/gpu_check_samples.png" 2> /dev/null
    run fid 90 '^(Inception Score|FID|sFID|Precision|Recall)' "$PY" fid.py "$WORK/samples.npz" "$WORK/real.npz" \
        --weights="$WORK/inception_random.pth" "${FID[@]}" --device="$DEVICE"
else
    say ""
    say "skipped the generator, sampling and FID: the BL-64 run left no checkpoint"
fi

# 4. the bench, its lines as they come: the loss terms (eager, fp32) first, then the cheap compiles, then the whole
# sampling loop (8 steps of a 24-layer generator and the decoder, one graph), then the recipe (BL-64's ran in step 2)
FIGURES='^(preset|[a-z_]+ +[0-9.]+ [a-z]+/s)'
run "bench_${PRESETS[0]}" 240 "$FIGURES" "${LOGGED[@]}" "$PY" -m tools.bench --preset="${PRESETS[0]}" \
    --workloads=lpips,convnext_s,decode,generator_train,sample,tokenizer_recipe "${BENCH_ITERS[@]}" --device="$DEVICE" \
    --dtype=bfloat16 --compile="$COMPILE"
for preset in "${PRESETS[@]:1}"; do
    run "bench_${preset}" 60 "$FIGURES" "$PY" -m tools.bench --preset="$preset" \
        --workloads=tokenizer_recipe,generator_train,decode,sample "${BENCH_ITERS[@]}" --device="$DEVICE" \
        --dtype=bfloat16 --compile=False
done
say ""
say "done in $(( $(date +%s) - START )) s of ${BUDGET}; every step's whole output in gpu_check_logs.tar.gz"
