"""
Reconstruct images with a TiTok tokenizer, and look inside its 1D tokens.

  python -m studies.reconstruct --tokenizer=out-shapes-tokenizer                     # the CPU demo, on its own held-out set
  python -m studies.reconstruct --tokenizer=out-shapes-tokenizer --study=True --out_dir=assets   # + the token study
  python -m studies.reconstruct --tokenizer=tokenizer_titok_l32_imagenet --dataset=/data/imagenet \\
      --eval_images=50000 --fid_weights=pt_inception-2015-12-05-6726825d.pth    # PSNR, SSIM, rFID and IS
  python -m studies.reconstruct --tokenizer=out-k16,out-k32,out-k64                   # the same images through several K
  python -m studies.reconstruct --tokenizer=out-ordered --keep=1,2,4,8,12   # an ordered_tokens model: coarse to fine

For the first eval_images images of the dataset (by default the tokenizer's own, as its training
config names it; a released tokenizer needs --dataset; the 'val' split: root/val, or for the
tokenizer's own folder without one the share its trainer held out; any other folder without one
is held out as a whole) it prints PSNR and SSIM, beside the PSNR of the same images replaced by
their mean colour and by their 4x4 and 8x8 block means (what the codes' bits buy with no learning),
with fid_weights the rFID and Inception Score of the official TiTok evaluator (fid.TokenizerEvaluator:
docs/evaluation.md), for a VQ tokenizer its codebook usage and entropy, then the codes of the first few
images: an image *is* K integers. It writes
out_dir/recon_grid.png (originals above reconstructions) and, with several tokenizers,
out_dir/token_count.png (the same images reconstructed by each). With keep, for the first tokenizer (trained with
ordered_tokens): the PSNR of the images decoded from their first k tokens for every k = 1..K (a table and
out_dir/keep_psnr.png, when matplotlib is installed), and coarse_to_fine.png: a row of them per k listed. With
study=True, for the first tokenizer:
  token_ablation.png  image study_image re-decoded with token k replaced by ablation_draws other codes
                      (codes that token k takes in other images), for every k: where the pixels change
                      (mean |change|, brightest = most), and one such decode
  token_swap.png      image A = study_image decoded with its token k taken from image B = swap_with,
                      for every k, and where each swap changed A
and it prints each token's spread: the fraction of the image area that holds half of its influence.
"""
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from checkpoints import load_tokenizer
from configurator import check, fail, script_config
from data import ImageFolder, Reader, as_float, make_dataset
from fid import TokenizerEvaluator, load_inception, to_uint8
from training import block_means, psnr, setup

BASELINES = (1, 4, 8)  # printed beside the PSNR: mean colour, 4x4 and 8x8 block means (data.block_means)
# -----------------------------------------------------------------------------
tokenizer = "out-shapes-tokenizer"  # train_tokenizer.py's out_dir (or ckpt.pt), or a released TiTok; comma-separated: several
dataset = ""  # '': the one the (first) tokenizer was trained on; else 'shapes' or an image folder
split = "val"
eval_images = 256  # PSNR, SSIM and rFID over the first this many images (the paper's rFID: 50k ImageNet val)
fid_weights = ""  # pytorch-fid's pt_inception-2015-12-05-6726825d.pth: also print the rFID and IS ('' skips them)
num_show = 8  # images in the figures
show_codes = 4  # print the codes of this many images
out_dir = "out-reconstruct"
keep = ""  # an ordered_tokens tokenizer, e.g. 1,2,4,8,12: a row each of images decoded from their first k tokens
# token study
study = False
study_image = 0  # the image of the ablation figure, and A of the swap
swap_with = 1  # B of the swap
study_images = 16  # the spread statistic is averaged over this many images
ablation_draws = 8  # replacement codes per token
# system
batch_size = 64
num_workers = -1  # processes loading the evaluated images (-1: 8 on CUDA, where the GPU would wait; 0 on CPU)
device = "auto"  # 'auto' (CUDA when present), 'cpu', 'cuda', ...
seed = 0
# -----------------------------------------------------------------------------
if __name__ == "__main__":
    script_config(globals())


def ssim(x, y):
    """SSIM of each image pair (B, 3, H, W) in [0, 1] (Wang et al. 2004): Gaussian window 11,
    sigma 1.5, K1 0.01, K2 0.03, over the windows inside the image, mean over channels."""
    g = torch.exp(-(torch.arange(11, dtype=torch.float64, device=x.device) - 5) ** 2 / (2 * 1.5 ** 2))
    w = (torch.outer(g, g) / g.sum() ** 2).expand(x.shape[1], 1, 11, 11)
    blur = lambda t: F.conv2d(t, w, groups=x.shape[1])
    x, y = x.double(), y.double()
    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = (2 * mx * my + c1) * (2 * cov + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return s.mean((1, 2, 3)).float()


@torch.no_grad()
def ablate(tok, codes, k, new_codes):
    """codes (K,) of one image -> (D, K) copies whose token k is each of new_codes (D,), and their decodes."""
    ablated = codes.repeat(len(new_codes), 1)
    ablated[:, k] = new_codes
    return ablated, tok.decode(ablated).clamp(0, 1)


@torch.no_grad()
def swap(tok, a, b):
    """codes a, b (K,) -> (K, K): row k is a with token k taken from b, and their decodes."""
    swapped = a.repeat(len(a), 1)
    swapped.diagonal().copy_(b)
    return swapped, tok.decode(swapped).clamp(0, 1)


@torch.no_grad()
def influence(tok, codes, pool, draws, generator):
    """For one image's codes (K,): per token k, the mean |change| of each pixel (over draws and channels)
    when code k is replaced by `draws` codes drawn from pool[:, k], the codes token k takes in other
    images -> (maps (K, H, W), one replaced decode per token (K, 3, H, W))."""
    base = tok.decode(codes[None]).clamp(0, 1)
    maps, examples = [], []
    for k in range(len(codes)):
        alt = pool[:, k][pool[:, k] != codes[k].cpu()]
        if len(alt) == 0:  # token k is the same in every image: any other code of the codebook
            alt = torch.arange(tok.config.codebook_size)
            alt = alt[alt != codes[k].cpu()]
        new = alt[torch.randint(len(alt), (draws,), generator=generator)].to(codes.device)
        images = ablate(tok, codes, k, new)[1]
        maps.append((images - base).abs().mean((0, 1)))
        examples.append(images[0])
    return torch.stack(maps), torch.stack(examples)


def spread(maps, mass=0.5):
    """Per map (..., H, W) of non-negative influence: the smallest fraction of its pixels that holds
    `mass` of the total (nan for an all-zero map). Spread evenly: mass; in one pixel: 1 / (H W)."""
    flat = maps.flatten(-2).sort(-1, descending=True).values
    total = flat.sum(-1, keepdim=True)
    frac = ((flat.cumsum(-1) < mass * total).sum(-1) + 1) / flat.shape[-1]
    return torch.where(total[..., 0] > 0, frac.float(), torch.nan)


def heat(m):
    """An (H, W) map -> a black-red-yellow-white image (3, H, W), scaled to its own maximum."""
    t = m / m.max().clamp_min(1e-12)
    return torch.stack([(3 * t).clamp(0, 1), (3 * t - 1).clamp(0, 1), (3 * t - 2).clamp(0, 1)])


def figure(rows, path, title, cell=128):
    """A labelled PNG: `rows` of (label, [(image (3, H, W) in [0, 1], caption), ...]), each image shown
    cell x cell (nearest neighbour: pixels stay pixels), its caption underneath, `title` lines on top."""
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = 8 + max(int(draw.textlength(label)) for label, _ in rows)
    ncol, row_h, top = max(len(items) for _, items in rows), cell + 16, 6 + 13 * len(title)
    fig = Image.new("RGB", (max(label_w + ncol * (cell + 4), 8 + max(int(draw.textlength(t)) for t in title)),
                            top + len(rows) * row_h), "white")
    draw = ImageDraw.Draw(fig)
    for i, line in enumerate(title):
        draw.text((4, 3 + 13 * i), line, fill="black")
    for r, (label, items) in enumerate(rows):
        y = top + r * row_h
        draw.text((4, y + cell // 2 - 6), label, fill="black")
        for c, (image, caption) in enumerate(items):
            x = label_w + c * (cell + 4)
            pixels = to_uint8(image.float().cpu()).permute(1, 2, 0).numpy()
            fig.paste(Image.fromarray(pixels).resize((cell, cell), Image.NEAREST), (x, y))
            draw.text((x, y + cell + 1), caption, fill="black")
    fig.save(path)


def pyplot(path, note):
    """matplotlib.pyplot drawing to files; where matplotlib is not installed (it is optional), None and a note on
    what holds the numbers of `path` instead."""
    try:
        import matplotlib
    except ImportError:
        print(f"no plot {path}: matplotlib is not installed (pip install matplotlib); {note}")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_by_k(psnrs, title, path):
    """{k: PSNR (n,)} -> a PNG of the mean PSNR against k, with its standard error (with matplotlib)."""
    plt = pyplot(path, "the table above has its numbers")
    if plt is None:
        return
    ks = list(psnrs)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.errorbar(ks, [v.mean().item() for v in psnrs.values()],
                [v.std().item() / len(v) ** 0.5 for v in psnrs.values()], marker="o", capsize=3)
    ax.set(xlabel="k: tokens decoded (the first k)", ylabel="held-out PSNR (dB)", title=title, xticks=ks)
    ax.title.set_fontsize(8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")


def chunks(items, n=8):
    return [items[i:i + n] for i in range(0, len(items), n)]


def training_config(path):
    """The train_tokenizer.py config stored in a checkpoint; {} for a released tokenizer."""
    p = Path(path)
    ckpt = p / "ckpt.pt" if p.is_dir() else p
    if ckpt.is_file() and ckpt.suffix == ".pt":
        return torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True).get("config", {})
    return {}


@torch.no_grad()
def evaluate(tok, data, n, inception, dev, keeps=()):
    """Reconstruct the first n images -> (PSNR (n,), SSIM (n,), codes (n, K), the official evaluator's
    numbers (fid.TokenizerEvaluator.result: rFID and IS with `inception`, codebook usage and entropy for a
    VQ tokenizer), the first num_show originals and reconstructions, {blocks: PSNR (n,)} of the block-means
    baselines, and for an ordered_tokens tokenizer {k: (PSNR (n,), the first num_show reconstructions)} of the
    same codes decoded from their first k, for each k of keeps). Metrics are those of the images as PNGs hold
    them (uint8), as the official trainer rounds reconstructions before its evaluator."""
    workers = num_workers
    if workers == -1:
        workers = min(8, os.cpu_count() or 1) if str(dev).startswith("cuda") else 0
    # items (index, no crop) of a Reader: an image folder's images cross from the workers as uint8 (a quarter of
    # float32's shared memory), made float on the device
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(Reader(data), [(i, None) for i in range(n)]), batch_size,
                                         num_workers=workers)
    vq = tok.config.quantize_mode != "vae"  # codes: VQ's or FSQ's
    official = TokenizerEvaluator(inception, tok.config.codebook_size if vq else 0)
    psnrs, ssims, codes, shown = [], [], [], None
    baselines = {blocks: [] for blocks in BASELINES}
    by_keep, shown_keep = {k: [] for k in keeps}, {}
    for images, _ in loader:
        images = as_float(images.to(dev))
        c = tok.encode(images)
        x, y = to_uint8(images), to_uint8(tok.decode(c).float())
        psnrs.append(psnr(x / 255, y / 255).cpu())
        for k, scores in by_keep.items():
            y_k = to_uint8(tok.decode(c[:, :k]).float())
            scores.append(psnr(x / 255, y_k / 255).cpu())
            if k not in shown_keep:
                shown_keep[k] = y_k[:num_show].cpu() / 255
        for blocks, scores in baselines.items():
            scores.append(psnr(x / 255, to_uint8(block_means(x / 255, blocks)) / 255).cpu())
        ssims.append(ssim(x / 255, y / 255).cpu())
        codes.append(c.cpu())
        shown = shown or (x[:num_show].cpu() / 255, y[:num_show].cpu() / 255)
        official.update(x / 255, y / 255, c if vq else None)
    return (torch.cat(psnrs), torch.cat(ssims), torch.cat(codes), official.result(), shown,
            {blocks: torch.cat(scores) for blocks, scores in baselines.items()},
            {k: (torch.cat(scores), shown_keep[k]) for k, scores in by_keep.items()})


def main():
    dev = setup(device, "float32", seed)[4]
    paths = [p for p in tokenizer.split(",") if p]
    if not paths:
        fail("tokenizer='' names no checkpoint; set --tokenizer to a trainer's out_dir (or several, comma-separated)")
    check(globals(), "> 0", ["eval_images", "num_show", "show_codes", "study_images", "ablation_draws", "batch_size"])
    check(globals(), ">= 0", ["study_image", "swap_with", "seed"])
    if num_workers < -1:
        fail(f"num_workers must be >= 0, or -1 (8 on CUDA, 0 on CPU), not {num_workers}; "
             "set --num_workers to such a value")
    if study and max(study_image, swap_with) >= eval_images:
        fail(f"study_image and swap_with must be below eval_images ({eval_images})")
    try:
        ks = [int(k) for k in keep.split(",")] if keep else []
    except ValueError:
        fail(f"keep={keep!r} is invalid: it must be comma-separated token counts; set e.g. --keep=1,2,4,8,12")
    try:
        toks = [load_tokenizer(path, dev) for path in paths]
        # float64, as the official evaluator runs torch-fidelity's Inception
        inception = load_inception(fid_weights, dev, torch.float64) if fid_weights else None
    except (OSError, ValueError) as e:
        fail(str(e))
    first = toks[0].config
    if ks and not first.ordered_tokens:
        fail(f"keep decodes images from their first k tokens, and {paths[0]} was trained without ordered_tokens (its "
             "decoder reads all K); train one with --ordered_tokens=True, or drop --keep")
    if ks and not all(1 <= k <= first.num_latent_tokens for k in ks):
        fail(f"keep={keep!r}: each k must be in 1..{first.num_latent_tokens}, the tokens of {paths[0]}")
    if study and toks[0].config.quantize_mode == "vae":
        fail(f"the token study replaces codes, and {paths[0]} is a VAE tokenizer (continuous tokens); set --study=False")
    train_config = training_config(paths[0])
    name = dataset or train_config.get("dataset")
    if not name:
        name = "shapes"
        print(f"{paths[0]} does not say what it was trained on (a released tokenizer): reconstructing the built-in "
              "shapes; pass --dataset=<image folder> (ImageNet val for the paper's numbers)")
    if name == "shapes":
        check(globals(), ("train", "val"), ["split"])

    # a folder without val/ that the tokenizer was not trained on: every image of it is held out
    own = train_config.get("dataset")
    whole = (name != "shapes" and not (Path(name) / "val").is_dir()
             and not (own and Path(own).resolve() == Path(name).resolve()))
    part = "all" if whole else split
    results = []
    for path, tok in zip(paths, toks):
        cfg = tok.config
        try:
            data = (ImageFolder(name, cfg.image_size) if whole else
                    make_dataset(name, cfg.image_size, split, eval_images, train_config.get("seed", 0)))
            data[0]  # a folder whose image files are all unreadable fails here, with its message
        except (FileNotFoundError, RuntimeError, ValueError) as e:
            fail(str(e))
        n = min(eval_images, len(data))
        keeps = range(1, cfg.num_latent_tokens + 1) if ks and not results else ()  # --keep: the first tokenizer's
        p, s, codes, scores, shown, baselines, by_k = evaluate(tok, data, n, inception, dev, keeps)
        tokens = f"codebook {cfg.codebook_size}" if cfg.quantize_mode != "vae" else f"continuous {cfg.token_size}-dim tokens"
        print(f"{path}: K={cfg.num_latent_tokens} tokens, {tokens}, {cfg.image_size}x{cfg.image_size}; "
              f"{n} {name} {part} images: PSNR {p.mean():.2f} dB, SSIM {s.mean():.4f}"
              + (f", rFID {scores['rfid']:.2f}, IS {scores['inception_score']:.2f} (the rFID is biased high with "
                 "few images; the paper's is over 50k)" if "rfid" in scores else "")
              + (f"; codebook usage {scores['codebook_usage']:.1%}, entropy {scores['codebook_entropy']:.2f} bits"
                 if "codebook_usage" in scores else ""))
        print("  the same images with no learning: " + ", ".join(
            f"{'mean colour' if b == 1 else f'{b}x{b} block means'} {v.mean():.2f} dB" for b, v in baselines.items()))
        results.append((path, tok, data, codes, p, shown, by_k))

    path, tok, data, codes, p, (x, y), by_k = results[0]
    if study and max(study_image, swap_with) >= len(codes):
        fail(f"study_image and swap_with must be below the number of images ({len(codes)})")
    cfg, K = tok.config, tok.config.num_latent_tokens
    if cfg.quantize_mode != "vae":
        print(f"an image is {K} integers in [0, {cfg.codebook_size}); the first {min(show_codes, len(codes))}:")
        for i in range(min(show_codes, len(codes))):
            print(f"  image {i}: {' '.join(map(str, codes[i].tolist()))}")
    else:
        print(f"an image is {K} tokens of {cfg.token_size} numbers (a VAE's posterior means; not codes)")
    os.makedirs(out_dir, exist_ok=True)
    cell = max(128, cfg.image_size)
    figure([("original", [(img, f"image {i}") for i, img in enumerate(x)]),
            (f"{K} tokens", [(img, f"{v:.1f} dB") for img, v in zip(y, p)])], os.path.join(out_dir, "recon_grid.png"),
           [f"{path}: {name} {part} images above their reconstructions from {K} tokens (PSNR below)"], cell)
    print(f"wrote {out_dir}/recon_grid.png")
    if len(results) > 1:
        figure([("original", [(img, f"image {i}") for i, img in enumerate(x)])]
               + [(f"K={r[1].config.num_latent_tokens}", [(img, f"{v:.1f} dB") for img, v in zip(r[5][1], r[4])])
                  for r in results], os.path.join(out_dir, "token_count.png"),
               ["the same images reconstructed by tokenizers with different numbers of tokens K (PSNR below)"], cell)
        print(f"wrote {out_dir}/token_count.png")
    if ks:  # an ordered tokenizer, coarse to fine: the PSNR of every k, and a row of images for each k listed
        print(f"{path}: the {len(codes)} images decoded from their first k of {K} tokens\n| k | PSNR (dB) |\n|---|---|")
        for k, (p_k, _) in by_k.items():
            print(f"| {k} | {p_k.mean():.2f} ± {p_k.std() / len(p_k) ** 0.5:.2f} |")
        figure([("original", [(img, f"image {i}") for i, img in enumerate(x)])]
               + [(f"first {k}", [(img, f"{v:.1f} dB") for img, v in zip(by_k[k][1], by_k[k][0])]) for k in ks],
               os.path.join(out_dir, "coarse_to_fine.png"),
               [f"{path}: {name} {part} images decoded from their first k of {K} tokens (PSNR below)"], cell)
        print(f"wrote {out_dir}/coarse_to_fine.png")
        plot_by_k({k: r[0] for k, r in by_k.items()}, f"{path}: {len(codes)} {name} {part} images",
                  os.path.join(out_dir, "keep_psnr.png"))
    if not study:
        return

    # the token study, on the first tokenizer: replace one token's code, decode, see what changes
    g = torch.Generator().manual_seed(seed)
    n = min(study_images, len(codes))
    spreads, change = [], []
    for i in range(n):
        maps = influence(tok, codes[i].to(dev), codes, ablation_draws, g)[0]
        spreads.append(spread(maps).cpu())
        change.append(maps.mean((1, 2)).cpu())
    spreads, change = torch.stack(spreads).nanmean(0), torch.stack(change).mean(0)
    ps = cfg.patch_size / cfg.image_size
    print(f"token study of {path}: each token's code replaced by {ablation_draws} codes it takes in other images.\n"
          f"spread = the fraction of the image area that holds 50% of a token's influence (the mean |pixel change| "
          f"when its code is replaced), averaged over {n} images; |change| = that change averaged over the image, "
          f"in grey levels of 255.\n"
          f"for scale: influence spread evenly over the image gives 0.50; influence confined to one "
          f"{cfg.patch_size}x{cfg.patch_size} patch (a 2D tokenizer's token, ideally) gives at most {ps * ps:.3f}")
    for ks in chunks(list(range(K))):
        print(f"  tokens {ks[0]:3d}-{ks[-1]:<3d} spread {' '.join(f'{spreads[k]:.2f}' for k in ks)}   "
              f"|change| {' '.join(f'{255 * change[k]:4.1f}' for k in ks)}")
    acts = (~spreads.isnan()).nonzero()[:, 0]  # tokens that changed anything
    lo, hi = acts[spreads[acts].argmin()], acts[spreads[acts].argmax()]
    print(f"mean spread over the {K} tokens: {spreads.nanmean():.3f}; weighted by |change|: "
          f"{(spreads[acts] * change[acts]).sum() / change[acts].sum():.3f} (min {spreads[lo]:.3f} at token {lo}, "
          f"max {spreads[hi]:.3f} at token {hi})")

    a, b = codes[study_image].to(dev), codes[swap_with].to(dev)
    maps, examples = influence(tok, a, codes, ablation_draws, g)
    s = spread(maps)
    with torch.no_grad():
        rec_a, rec_b = tok.decode(torch.stack([a, b])).clamp(0, 1)
    figure([("image", [(data[study_image][0], "original"), (rec_a, "reconstruction")])]
           + [row for ks in chunks(list(range(K))) for row in (
               ("where it acts", [(heat(maps[k]), f"k={k} s={s[k]:.2f}") for k in ks]),
               ("k replaced", [(examples[k], f"k={k} |d|={255 * maps[k].mean():.1f}") for k in ks]))],
           os.path.join(out_dir, "token_ablation.png"),
           [f"token ablation ({path}, K={K}): image {study_image} decoded with token k replaced by "
            f"{ablation_draws} codes that token k takes in other images.",
            "'where it acts': the mean per-pixel change (white = its own maximum); s: fraction of the image holding half "
            "of it. 'k replaced': one such decode; |d|: the mean change, in grey levels of 255."], cell)
    swapped = swap(tok, a, b)[1]
    d = (swapped - rec_a).abs().mean((1, 2, 3))
    figure([("A and B", [(data[study_image][0], "A"), (data[swap_with][0], "B"), (rec_a, "A recon"), (rec_b, "B recon")])]
           + [row for ks in chunks(list(range(K))) for row in (
               ("A, token k of B", [(swapped[k], f"k={k} |d|={255 * d[k]:.1f}") for k in ks]),
               ("what moved", [(heat((swapped[k] - rec_a).abs().mean(0)), f"k={k}") for k in ks]))],
           os.path.join(out_dir, "token_swap.png"),
           [f"token swap ({path}, K={K}): image A = {study_image} decoded with its token k taken from image "
            f"B = {swap_with}; |d|: mean change from A's reconstruction, in grey levels of 255;",
            "'what moved': where it changed (white = its own maximum)"], cell)
    top = d.argsort(descending=True)[:4].tolist()
    print(f"swap: the tokens of B that change A the most: {', '.join(f'{k} (|d| {255 * d[k]:.1f})' for k in top)}; "
          f"{(a == b).sum()} of A's {K} codes equal B's")
    print(f"wrote {out_dir}/token_ablation.png and {out_dir}/token_swap.png")


if __name__ == "__main__":
    main()
