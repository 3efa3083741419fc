"""
The paper's preliminary experiments (Fig. 4, supplementary Tab. 4; the 2D variant of Tab. 3c) in
miniature, on the built-in shapes: a grid of tokenizers over the number of tokens K and the model size,
plus the 2D layout at some of those token counts (equal steps, equal code bits), and for each, with its
sampling error
  - held-out PSNR, beside the PSNR of the same images' mean colour and block means (reconstruct.evaluate);
  - the linear-probe accuracy of the shape class on the frozen encoder's token outputs, before the
    projection to the quantizer, averaged over the tokens (MAE's probe: BatchNorm without affine, then
    a linear layer; `linear_probe`);
  - a MaskGIT trained on its codes with the same budget for every point: its share of samples in
    their class (classify.py), its training speed and its sampling speed.
Each trainer runs as a subprocess with config/shapes_tokenizer.py or config/shapes_generator.py and
the point's flags, so the trainers stay the single source of truth. Every point writes
out_dir/<point>/result.json; then out_dir/fig4.md and fig4.csv hold the table of the whole grid.
A rerun skips every point whose settings are unchanged, keeps a tokenizer (or generator) checkpoint
that is a finished run of the same settings, and recomputes the rest: change one constant, rerun.

  python -m studies.fig4                                      # the whole grid on a CPU, no download
  python -m studies.fig4 --ks=[4,8,12,16] --sizes=['tiny']      # another grid; finished points are kept
"""
import csv
import functools
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from checkpoints import load_tokenizer
from configurator import fail, script_config
from data import Shapes
from studies.reconstruct import evaluate
from training import format_time

# -----------------------------------------------------------------------------
out_dir = "out-fig4"
# the grid: 1D points for every (size, K), and 2D points (one token per patch) for every (size, tokens_2d)
sizes = ["tiny"]  # model.PRESETS
ks = [4, 8, 16]  # tokens of the 1D points: 1/4 to 1 of the 16 patches (K = 2 x 12 bits is no more than the mean colour)
image_size = 64
patch_size = 16  # of the 1D points: (64 / 16)^2 = 16 patches
tokens_2d = [4, 16]  # the 2D points: 4 tokens (32-px patches) and 16 (16-px patches), against the 1D K = 4 and 16
# the budget, the same for every point
tokenizer_config = "config/shapes_tokenizer.py"
# over the config, every point: 12 bits a token, as the paper's; the routing init with one patch per latent
# (scattering needs K x heads >= patches); the pixel-grid head
routing_scatter = False
head_upsample = 4
codebook_size = 4096
tokenizer_iters = 1500
generator_config = "config/shapes_generator.py"
generator_iters = 800
num_train = 5000  # training images of the tokenizers, and of the generators (with their flips)
# evaluation
eval_images = 256  # held-out PSNR
probe_train = 2000  # linear probe: features of this many training images, accuracy on probe_test held-out ones
probe_test = 500
samples_per_class = 50  # scored by classify.py's CNN
classifier_images = 12000  # the CNN's training (classify.py's num_train and steps), once per out_dir
classifier_steps = 800
# -----------------------------------------------------------------------------


def linear_probe(train_x, train_y, test_x, test_y, num_classes, epochs=100, lr=1e-2, batch_size=256, seed=0):
    """MAE's linear probe on frozen features: BatchNorm1d without affine, then a linear layer (from zeros:
    the problem is convex), trained with Adam on (train_x (N, D), train_y) -> accuracy on (test_x, test_y)."""
    probe = nn.Sequential(nn.BatchNorm1d(train_x.shape[1], affine=False), nn.Linear(train_x.shape[1], num_classes))
    nn.init.zeros_(probe[1].weight)
    nn.init.zeros_(probe[1].bias)
    optimizer = torch.optim.Adam(probe.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    bs = min(batch_size, len(train_x))
    for _ in range(epochs):
        for idx in torch.randperm(len(train_x), generator=g)[:len(train_x) // bs * bs].view(-1, bs):
            loss = F.cross_entropy(probe(train_x[idx]), train_y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    probe.eval()
    with torch.no_grad():
        return (probe(test_x).argmax(1) == test_y).float().mean().item()


@torch.no_grad()
def token_features(tok, images, batch_size=250):
    """The frozen encoder's token outputs before its projection to the quantizer (the K latent tokens;
    layout '2d': the patch tokens), averaged over the tokens -> (N, width)."""
    out = []
    hook = tok.encoder.proj_out.register_forward_hook(lambda module, args, output: out.append(args[0].mean(1)))
    for i in range(0, len(images), batch_size):
        tok.encoder(images[i:i + batch_size])
    hook.remove()
    return torch.cat(out)


def read_config(path):
    """The assignments of a config file, as configurator.py reads them."""
    scope = {}
    exec(open(path).read(), {}, scope)
    return {k: v for k, v in scope.items() if not k.startswith("_")}


def finished(run_dir, settings, newer_than=None):
    """Whether run_dir/ckpt.pt is a finished run of these settings (and written after `newer_than`)."""
    path = os.path.join(run_dir, "ckpt.pt")
    if not os.path.isfile(path) or newer_than and os.path.getmtime(path) <= os.path.getmtime(newer_than):
        return False
    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return ckpt["iter_num"] == settings["max_iters"] and all(ckpt["config"].get(k) == v for k, v in settings.items())


def run(args, log):
    """Run a repository script (args: script or -m module, config file, --key=value flags) with its output to `log`, then
    its wall time; stop on failure."""
    cmd = [sys.executable, *args]
    t = time.time()
    with open(log, "w") as f:
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    with open(log, "a") as f:
        f.write(f"fig4: wall {time.time() - t:.1f} s\n")
    if code:
        print("".join(open(log).readlines()[-6:-1]), end="", file=sys.stderr)
        fail(f"{' '.join(cmd)} failed (exit {code}); its output is in {log}")
    return open(log).read()


def flags(settings):
    return [f"--{k}={v}" for k, v in settings.items()]


def parse(pattern, text, what, reduce=statistics.median):
    values = [float(v) for v in re.findall(pattern, text)]
    if not values:
        fail(f"no {what} found in the output ({pattern!r})")
    return reduce(values)


def share_error(pct, n):
    """The sampling error (one standard error, in points) of a share of `pct`% measured on n items."""
    return round(100 * math.sqrt(pct / 100 * (1 - pct / 100) / n), 1)


def in_class(pattern, scored, what):
    """classify.py's share in their class, and its sampling error."""
    pct = parse(pattern + r": ([\d.]+)% of", scored, what)
    return pct, share_error(pct, int(parse(pattern + r": [\d.]+% of (\d+)", scored, what)))


def rendered(data):
    images, labels = zip(*(data[j] for j in range(len(data))))
    return torch.stack(images), torch.tensor(labels)


def grid():
    """(name, flags of train_tokenizer.py) of every point, in the table's order."""
    recipe = dict(routing_scatter=routing_scatter, head_upsample=head_upsample, codebook_size=codebook_size)
    points = []
    for size in sizes:
        for k in ks:
            points.append((f"{size}-{k}", dict(recipe, model_size=size, layout="1d", patch_size=patch_size,
                                               num_latent_tokens=k)))
        for k in tokens_2d:
            points.append((f"{size}-2d{k}", dict(recipe, model_size=size, layout="2d", patch_size=image_size // math.isqrt(k),
                                                  num_latent_tokens=k, routing_init=False)))
    return points


@functools.cache
def probe_images():
    """(images, labels) of the probe's training and held-out images: rendered once, and only if needed."""
    return [rendered(Shapes(image_size, "train", probe_train)), rendered(Shapes(image_size, "val", probe_test))]


def evaluate_point(name, d, classifier):
    """Sample, score, reconstruct and probe one point's trained tokenizer and generator -> its table row."""
    tok_dir, gen_dir = os.path.join(d, "tokenizer"), os.path.join(d, "generator")
    sampled = run(["sample.py", *flags(dict(generator=gen_dir, samples_per_class=samples_per_class,
                                            out=os.path.join(d, "samples")))], os.path.join(d, "sample.log"))
    scored = run(["-m", "studies.classify", *flags(dict(npz=os.path.join(d, "samples.npz"), tokenizer=tok_dir,
                                             classifier=classifier, image_size=image_size))],
                 os.path.join(d, "classify.log"))
    tok = load_tokenizer(tok_dir)
    psnr, _, _, _, _, baselines = evaluate(tok, Shapes(image_size, "val", eval_images), eval_images, None, "cpu")
    (train_x, train_y), (test_x, test_y) = probe_images()
    probe = linear_probe(token_features(tok, train_x), train_y, token_features(tok, test_x), test_y, Shapes.num_classes)
    tok_log, gen_log = open(os.path.join(d, "tokenizer.log")).read(), open(os.path.join(d, "generator.log")).read()
    cfg = tok.config
    recon, recon_err = in_class(r"their reconstructions by .*?", scored, "reconstructions' score")
    samples, samples_err = in_class(r"samples in .*?", scored, "samples' score")
    return dict(
        point=name, layout=cfg.layout, size=name.split("-")[0], tokens=cfg.num_latent_tokens,
        patches=cfg.grid_size ** 2, params_M=round(sum(p.numel() for p in tok.parameters()) / 1e6, 3),
        psnr_dB=round(psnr.mean().item(), 2), psnr_err=round(psnr.std().item() / math.sqrt(len(psnr)), 2),
        probe_pct=round(100 * probe, 1), probe_err=share_error(100 * probe, probe_test),
        recon_in_class_pct=recon, recon_err=recon_err, samples_in_class_pct=samples, samples_err=samples_err,
        gen_train_seq_per_s=round(parse(r"\| ([\d.]+) seq/s", gen_log, "generator training speed")),
        sampling_img_per_s=parse(r"samples in [\d.]+s: ([\d.]+) samples/s", sampled, "sampling speed"),
        tokenizer_train_s=parse(r"fig4: wall ([\d.]+) s", tok_log, "tokenizer wall time"),
        generator_train_s=parse(r"fig4: wall ([\d.]+) s", gen_log, "generator wall time"),
        real_in_class_pct=parse(r"held-out real images: ([\d.]+)% of", scored, "real images' score"),
        **{f"baseline_{b}x{b}_dB" if b > 1 else "baseline_mean_colour_dB": round(v.mean().item(), 2)
           for b, v in baselines.items()})


def main():
    sys.stdout.reconfigure(line_buffering=True)  # progress reaches a log file (or tee) as it happens
    if not ks or not sizes or min(ks) < 1:
        fail("ks and sizes must be non-empty lists, ks of positive token counts")
    for k in tokens_2d:  # a 2D point has one token per patch: a g x g grid of image_size / g px patches
        if k < 1 or math.isqrt(k) ** 2 != k or image_size % math.isqrt(k):
            fail(f"tokens_2d holds {k}: a 2D point's token count must be a square g*g with g dividing "
                 f"image_size={image_size} (one token per patch), e.g. 4 or 16")
    for path in (tokenizer_config, generator_config):
        if not os.path.isfile(path):
            fail(f"config file {path} does not exist")
    os.makedirs(out_dir, exist_ok=True)
    classifier = os.path.join(out_dir, f"classifier-{image_size}px-{classifier_images}x{classifier_steps}.pt")
    t_start, points, rows = time.time(), grid(), []
    for i, (name, tok_flags) in enumerate(points, 1):
        step = f"[{i}/{len(points)}] {name}:"
        d = os.path.join(out_dir, name)
        tok_dir, gen_dir = os.path.join(d, "tokenizer"), os.path.join(d, "generator")
        tok_flags = dict(tok_flags, image_size=image_size, max_iters=tokenizer_iters, num_train=num_train,
                         out_dir=tok_dir)
        gen_flags = dict(tokenizer=tok_dir, max_iters=generator_iters, num_train=num_train,
                         log_interval=max(1, generator_iters // 10), out_dir=gen_dir)  # ten speed readings
        settings = dict(tokenizer={**read_config(tokenizer_config), **tok_flags},
                        generator={**read_config(generator_config), **gen_flags},
                        eval=dict(eval_images=eval_images, probe_train=probe_train, probe_test=probe_test,
                                  samples_per_class=samples_per_class, classifier=classifier))
        result_path = os.path.join(d, "result.json")
        saved = json.load(open(result_path)) if os.path.isfile(result_path) else {}
        if saved.get("settings") == json.loads(json.dumps(settings)):
            rows.append(saved["result"])
            print(f"{step} done before, kept ({result_path})")
            continue
        os.makedirs(d, exist_ok=True)
        t_point, kept = time.time(), []
        if finished(tok_dir, settings["tokenizer"]):
            kept.append("tokenizer")
        else:
            print(f"{step} training the tokenizer (log: {d}/tokenizer.log)")
            run(["train_tokenizer.py", tokenizer_config, *flags(tok_flags)], os.path.join(d, "tokenizer.log"))
        if finished(gen_dir, settings["generator"], newer_than=os.path.join(tok_dir, "ckpt.pt")):
            kept.append("generator")
        else:
            print(f"{step} training the generator (log: {d}/generator.log)")
            run(["train_generator.py", generator_config, *flags(gen_flags)], os.path.join(d, "generator.log"))
        if not os.path.isfile(classifier):
            print(f"training the shape classifier (once; log: {out_dir}/classifier.log)")
            run(["-m", "studies.classify", *flags(dict(npz="", classifier=classifier, image_size=image_size,
                                            num_train=classifier_images, steps=classifier_steps))],
                os.path.join(out_dir, "classifier.log"))
        print(f"{step} evaluating" + (f" (kept the finished {' and '.join(kept)})" if kept else ""))
        result = evaluate_point(name, d, classifier)
        json.dump(dict(settings=settings, result=result), open(result_path, "w"), indent=1)
        rows.append(result)
        print(f"{step} PSNR {result['psnr_dB']} dB, probe {result['probe_pct']}%, samples in their class "
              f"{result['samples_in_class_pct']}% | this point {format_time(time.time() - t_point)}, "
              f"elapsed {format_time(time.time() - t_start)}")
    write_table(rows)
    print(f"wrote {out_dir}/fig4.md and {out_dir}/fig4.csv ({len(rows)} points) in {format_time(time.time() - t_start)}")


def write_table(rows):
    with open(os.path.join(out_dir, "fig4.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    first = rows[0]
    lines = [
        f"# Fig. 4 in miniature: `python -m studies.fig4` ({image_size}px shapes; {torch.get_num_threads()} threads)", "",
        f"The grid: sizes {sizes}; 1D with K in {ks}, {patch_size}px patches; 2D with {tokens_2d} tokens. "
        f"Every tokenizer: {tokenizer_config} with its flags, head_upsample {head_upsample}, {codebook_size} codes, "
        f"routing_scatter {routing_scatter}, {tokenizer_iters} steps, {num_train} training images; "
        f"every generator: {generator_config}, {generator_iters} steps on the codes of the same images and their flips.",
        "", "| tokenizer | layout | tokens K | patches | params (M) | held-out PSNR (dB) | linear probe (%) | "
        "reconstructions in class (%) | samples in class (%) | generator training (seq/s) | sampling (img/s) | "
        "tokenizer wall (s) | generator wall (s) |", "|" + "---|" * 13]
    for r in rows:
        lines.append(f"| {r['point']} | {r['layout']} | {r['tokens']} | {r['patches']} | {r['params_M']} | "
                     f"{r['psnr_dB']} ± {r['psnr_err']} | {r['probe_pct']} ± {r['probe_err']} | "
                     f"{r['recon_in_class_pct']} ± {r['recon_err']} | {r['samples_in_class_pct']} ± {r['samples_err']} | "
                     f"{r['gen_train_seq_per_s']} | {r['sampling_img_per_s']} | {r['tokenizer_train_s']} | "
                     f"{r['generator_train_s']} |")
    lines += [
        "", "± : one standard error of the sampling (PSNR: over the images; shares: binomial).",
        f"- held-out PSNR: {eval_images} held-out images as PNGs hold them; the same images with no learning: "
        f"mean colour {first['baseline_mean_colour_dB']} dB, 4x4 block means {first['baseline_4x4_dB']} dB, "
        f"8x8 block means {first['baseline_8x8_dB']} dB.",
        f"- linear probe: the encoder's token outputs before the projection to the quantizer, averaged over the "
        f"tokens, BatchNorm (no affine) + linear layer, trained on {probe_train} training images, accuracy on "
        f"{probe_test} held-out ones (chance 10%).",
        f"- in class: classify.py's CNN (chance 10%; {first['real_in_class_pct']}% of real held-out images); "
        f"reconstructions of 500 held-out images, and {samples_per_class} samples per class.",
        "- generator training: the median of train_generator.py's ten sequences/s readings (tokenizing "
        "excluded); sampling: sample.py's images/s, generation and decoding, batch 64; wall times include start-up, "
        "and the generator's tokenizing its training set."]
    with open(os.path.join(out_dir, "fig4.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    script_config(globals())
    main()
