"""
The paper's preliminary experiments (Fig. 4, supplementary Tab. 4; the 2D variant of Tab. 3c) in
miniature, on the demo's model and data (config/shapes_tokenizer.py, config/shapes_generator.py, shorter): a
grid of tokenizers over the number of tokens K and the model size, the 2D layout with one token per patch, and
one ordered-tokens model (ordered_tokens: the decoder reads any first k of its K tokens) decoded from its first
k tokens for each K of the grid. Every point is trained once per seed; the table gives, over the seeds, the mean,
their spread and one run's sampling error, of
  - held-out PSNR, beside the PSNR of the same images' mean colour and block means (reconstruct.evaluate);
  - the linear-probe accuracy of the shape class on the frozen encoder's token outputs, before the
    projection to the quantizer, averaged over the tokens (MAE's probe: BatchNorm without affine, then
    a linear layer; `linear_probe`);
  - a MaskGIT trained on its codes with the same budget for every point: its share of samples in
    their class (classify.py), its training speed and its sampling speed.
Each trainer runs as a subprocess with the configs and the point's flags, so the trainers stay the single source
of truth. Every point and seed writes out_dir/<point>/seed<s>/result.json; then out_dir/fig4.md (the table),
fig4.csv (every run) and fig4.png (PSNR and samples in class against K; with matplotlib) hold the whole grid.
A rerun skips every run whose settings are unchanged, keeps a tokenizer (or generator) checkpoint that is a
finished run of the same settings, and recomputes the rest: change one constant, rerun.

  python -m studies.fig4                                      # the whole grid on a CPU, no download
  python -m studies.fig4 --ks=[4,8,12,16] --seeds=[0,1,2]     # another grid; finished runs are kept
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
from studies.reconstruct import evaluate, pyplot
from training import format_time

# -----------------------------------------------------------------------------
out_dir = "out-fig4"
# the grid: 1D points for every (size, K), 2D points (one token per patch) for every (size, tokens_2d), and with
# `ordered` one ordered-tokens model per size at the largest K, decoded from its first k for every K of ks
sizes = ["tiny"]  # model.PRESETS
ks = [4, 8, 16]  # tokens of the 1D points: 1/4 to all of the demo's 16 patches (scattered routing: K x heads >= 16)
tokens_2d = [4, 16]  # the 2D points: 4 tokens (16-px patches) and 16 (the demo's 8-px patches)
ordered = True
seeds = [0, 1]  # every point is trained with each (its data, order and initialisation)
# the budget, the same for every point: the demo's configs (32-px images, 8-px patches, 1,024 codes, routing init)
tokenizer_config = "config/shapes_tokenizer.py"
tokenizer_iters = 1000
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
METRICS = ("psnr_dB", "probe_pct", "recon_in_class_pct", "samples_in_class_pct")  # each with its sampling error


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


def grid(image_size):
    """(name, flags of train_tokenizer.py over its config) of every point, in the table's order."""
    points = []
    for size in sizes:
        points += [(f"{size}-{k}", dict(model_size=size, num_latent_tokens=k)) for k in ks]
        if ordered:  # one model, decoded from its first k tokens for every k of ks
            points.append((f"{size}-ordered{max(ks)}", dict(model_size=size, num_latent_tokens=max(ks), ordered_tokens=True)))
        points += [(f"{size}-2d{k}", dict(model_size=size, layout="2d", patch_size=image_size // math.isqrt(k),
                                          num_latent_tokens=k, routing_init=False, routing_scatter=False))
                   for k in tokens_2d]
    return points


@functools.cache
def probe_images(image_size):
    """(images, labels) of the probe's training and held-out images: rendered once, and only if needed."""
    return [rendered(Shapes(image_size, "train", probe_train)), rendered(Shapes(image_size, "val", probe_test))]


def evaluate_point(name, seed, d, classifier):
    """Sample, score, reconstruct and probe one run's trained tokenizer and generator -> its result; an ordered
    tokenizer's also from its first k tokens for every k of ks."""
    tok_dir, gen_dir = os.path.join(d, "tokenizer"), os.path.join(d, "generator")
    tok = load_tokenizer(tok_dir)
    cfg = tok.config
    sampled = run(["sample.py", *flags(dict(generator=gen_dir, samples_per_class=samples_per_class, seed=seed,
                                            out=os.path.join(d, "samples")))], os.path.join(d, "sample.log"))
    scored = run(["-m", "studies.classify", *flags(dict(npz=os.path.join(d, "samples.npz"), tokenizer=tok_dir,
                                             classifier=classifier, image_size=cfg.image_size))],
                 os.path.join(d, "classify.log"))
    held_out = Shapes(cfg.image_size, "val", eval_images)
    keeps = ks if cfg.ordered_tokens else ()  # an ordered tokenizer: the same codes from their first k, each k of ks
    psnr, _, _, _, _, baselines, first = evaluate(tok, held_out, eval_images, None, "cpu", keeps)
    (train_x, train_y), (test_x, test_y) = probe_images(cfg.image_size)
    probe = linear_probe(token_features(tok, train_x), train_y, token_features(tok, test_x), test_y, Shapes.num_classes)
    tok_log, gen_log = open(os.path.join(d, "tokenizer.log")).read(), open(os.path.join(d, "generator.log")).read()
    recon, recon_err = in_class(r"their reconstructions by .*?", scored, "reconstructions' score")
    samples, samples_err = in_class(r"samples in .*?", scored, "samples' score")
    return dict(
        point=name, seed=seed, layout=cfg.layout, size=name.split("-")[0], tokens=cfg.num_latent_tokens,
        patches=cfg.grid_size ** 2, params_M=round(sum(p.numel() for p in tok.parameters()) / 1e6, 3),
        psnr_dB=round(psnr.mean().item(), 2), psnr_dB_err=round(psnr.std().item() / math.sqrt(len(psnr)), 2),
        probe_pct=round(100 * probe, 1), probe_pct_err=share_error(100 * probe, probe_test),
        recon_in_class_pct=recon, recon_in_class_pct_err=recon_err,
        samples_in_class_pct=samples, samples_in_class_pct_err=samples_err,
        gen_train_seq_per_s=round(parse(r"\| ([\d.]+) seq/s", gen_log, "generator training speed")),
        sampling_img_per_s=parse(r"samples in [\d.]+s: ([\d.]+) samples/s", sampled, "sampling speed"),
        tokenizer_train_s=parse(r"fig4: wall ([\d.]+) s", tok_log, "tokenizer wall time"),
        generator_train_s=parse(r"fig4: wall ([\d.]+) s", gen_log, "generator wall time"),
        real_in_class_pct=parse(r"held-out real images: ([\d.]+)% of", scored, "real images' score"),
        **{f"baseline_{b}x{b}_dB" if b > 1 else "baseline_mean_colour_dB": round(v.mean().item(), 2)
           for b, v in baselines.items()},
        **{f"psnr_first_{k}_dB": round(v.mean().item(), 2) for k, (v, _) in first.items()},
        **{f"psnr_first_{k}_dB_err": round(v.std().item() / math.sqrt(len(v)), 2) for k, (v, _) in first.items()})


def main():
    sys.stdout.reconfigure(line_buffering=True)  # progress reaches a log file (or tee) as it happens
    if not ks or not sizes or min(ks) < 1:
        fail("ks and sizes must be non-empty lists, ks of positive token counts")
    if not seeds or not all(type(s) is int and s >= 0 for s in seeds) or len(set(seeds)) < len(seeds):
        fail(f"seeds={seeds!r} must be a non-empty list of distinct integers >= 0, e.g. [0, 1]")
    for path in (tokenizer_config, generator_config):
        if not os.path.isfile(path):
            fail(f"config file {path} does not exist")
    image_size = read_config(tokenizer_config).get("image_size", 256)
    for k in tokens_2d:  # a 2D point has one token per patch: a g x g grid of image_size / g px patches
        if k < 1 or math.isqrt(k) ** 2 != k or image_size % math.isqrt(k):
            fail(f"tokens_2d holds {k}: a 2D point's token count must be a square g*g with g dividing "
                 f"image_size={image_size} ({tokenizer_config}; one token per patch), e.g. 4 or 16")
    os.makedirs(out_dir, exist_ok=True)
    classifier = os.path.join(out_dir, f"classifier-{image_size}px-{classifier_images}x{classifier_steps}.pt")
    t_start, points, runs = time.time(), grid(image_size), []
    todo = [(name, tok_flags, seed) for name, tok_flags in points for seed in seeds]
    for i, (name, tok_flags, seed) in enumerate(todo, 1):
        step = f"[{i}/{len(todo)}] {name} seed {seed}:"
        d = os.path.join(out_dir, name, f"seed{seed}")
        tok_dir, gen_dir = os.path.join(d, "tokenizer"), os.path.join(d, "generator")
        tok_flags = dict(tok_flags, seed=seed, max_iters=tokenizer_iters, num_train=num_train, out_dir=tok_dir)
        gen_flags = dict(tokenizer=tok_dir, seed=seed, max_iters=generator_iters, num_train=num_train,
                         log_interval=max(1, generator_iters // 10), out_dir=gen_dir)  # ten speed readings
        settings = dict(tokenizer={**read_config(tokenizer_config), **tok_flags},
                        generator={**read_config(generator_config), **gen_flags},
                        eval=dict(eval_images=eval_images, probe_train=probe_train, probe_test=probe_test,
                                  samples_per_class=samples_per_class, classifier=classifier,
                                  ks=ks if tok_flags.get("ordered_tokens") else None))
        result_path = os.path.join(d, "result.json")
        saved = json.load(open(result_path)) if os.path.isfile(result_path) else {}
        if saved.get("settings") == json.loads(json.dumps(settings)):
            runs.append(saved["result"])
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
        result = evaluate_point(name, seed, d, classifier)
        json.dump(dict(settings=settings, result=result), open(result_path, "w"), indent=1)
        runs.append(result)
        print(f"{step} PSNR {result['psnr_dB']} dB, probe {result['probe_pct']}%, samples in their class "
              f"{result['samples_in_class_pct']}% | this run {format_time(time.time() - t_point)}, "
              f"elapsed {format_time(time.time() - t_start)}")
    rows = table_rows(runs, image_size)
    write_table(runs, rows, image_size)
    plot(rows, os.path.join(out_dir, "fig4.png"))
    print(f"wrote {out_dir}/fig4.md and {out_dir}/fig4.csv ({len(points)} points x {len(seeds)} seeds) in "
          f"{format_time(time.time() - t_start)}")


def spread(values, errors):
    """A metric over the seeds: (mean, the seeds' standard deviation (None for one seed), one run's sampling error:
    the mean of theirs)."""
    return (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None,
            statistics.mean(errors) if errors else None)


def table_rows(runs, image_size):
    """The runs (one per point and seed) -> a row per point (an ordered point: one per k of ks, from its first k
    tokens; k < K: its PSNR only): {column: (mean, spread, sampling error)} and the point's facts."""
    rows = []
    for name in dict.fromkeys(r["point"] for r in runs):
        mine = [r for r in runs if r["point"] == name]
        row = {key: spread([r[key] for r in mine], [r[f"{key}_err"] for r in mine]) for key in METRICS}
        row.update({key: spread([r[key] for r in mine], []) for key in ("gen_train_seq_per_s", "sampling_img_per_s",
                                                                         "tokenizer_train_s", "generator_train_s")})
        row.update({key: mine[0][key] for key in ("point", "layout", "size", "tokens", "patches", "params_M")},
                   seeds=len(mine), ordered=f"psnr_first_{ks[0]}_dB" in mine[0])
        if not row["ordered"]:
            rows.append(row)
            continue
        for k in ks:  # the same model, decoded from its first k tokens
            psnr = spread([r[f"psnr_first_{k}_dB"] for r in mine], [r[f"psnr_first_{k}_dB_err"] for r in mine])
            rows.append(dict(row, psnr_dB=psnr, tokens=k) if k == row["tokens"] else
                        dict(point=name, layout="1d", size=row["size"], tokens=k, patches=row["patches"],
                             params_M=row["params_M"], seeds=row["seeds"], ordered=True, psnr_dB=psnr))
    return rows


def cell(value, digits):
    """(mean, seeds' spread, sampling error) -> 'mean ± spread (error)'; absent: '–'."""
    if value is None:
        return "–"
    mean, sd, err = value
    return (f"{mean:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd is not None else "")
            + (f" ({err:.{digits}f})" if err is not None else ""))


def write_table(runs, rows, image_size):
    fields = list(dict.fromkeys(key for r in runs for key in r))
    with open(os.path.join(out_dir, "fig4.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(runs)
    first = runs[0]
    lines = [
        f"# Fig. 4 in miniature: `python -m studies.fig4` ({image_size}px shapes; {torch.get_num_threads()} threads)", "",
        f"The grid: sizes {sizes}; 1D with K in {ks}; 2D with {tokens_2d} tokens (one per patch)"
        + (f"; one ordered-tokens model at K = {max(ks)}, decoded from its first k tokens for each k" if ordered else "")
        + f"; seeds {seeds}. Every tokenizer: {tokenizer_config} with the point's flags, {tokenizer_iters} steps, "
        f"{num_train} training images; every generator: {generator_config}, {generator_iters} steps on the codes of the "
        "same images and their flips.", "",
        "| tokenizer | layout | tokens K | patches | params (M) | held-out PSNR (dB) | linear probe (%) | "
        "reconstructions in class (%) | samples in class (%) | generator training (seq/s) | sampling (img/s) | "
        "tokenizer wall (s) | generator wall (s) |", "|" + "---|" * 13]
    for r in rows:
        name = f"{r['point']}, first {r['tokens']}" if r["ordered"] else r["point"]
        lines.append(f"| {name} | {r['layout']} | {r['tokens']} | {r['patches']} | {r['params_M']} | "
                     f"{cell(r['psnr_dB'], 2)} | {cell(r.get('probe_pct'), 1)} | {cell(r.get('recon_in_class_pct'), 1)} | "
                     f"{cell(r.get('samples_in_class_pct'), 1)} | {cell(r.get('gen_train_seq_per_s'), 0)} | "
                     f"{cell(r.get('sampling_img_per_s'), 1)} | {cell(r.get('tokenizer_train_s'), 0)} | "
                     f"{cell(r.get('generator_train_s'), 0)} |")
    lines += [
        "", (f"mean ± the standard deviation over the {len(seeds)} seeds" if len(seeds) > 1 else "one seed (no spread)")
        + " (one run's sampling error: PSNR over the images, shares binomial); a difference smaller than both is not "
        "one. Every run is a row of fig4.csv.",
        f"- held-out PSNR: {eval_images} held-out images as PNGs hold them; the same images with no learning: "
        f"mean colour {first['baseline_mean_colour_dB']} dB, 4x4 block means {first['baseline_4x4_dB']} dB, "
        f"8x8 block means {first['baseline_8x8_dB']} dB."]
    lines += ["- ordered: one model trained with ordered_tokens (each training image keeps its first k of K tokens, k "
              "uniform), decoded from its first k tokens; its probe, classes and speeds are those of all K tokens."
              ] if any(r["ordered"] for r in rows) else []
    lines += [
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


def plot(rows, path):
    """Held-out PSNR and samples in class against the tokens K, a line per kind of point (1D, ordered, 2D) and size,
    the seeds' spread as error bars (with matplotlib)."""
    plt = pyplot(path, "fig4.md has its numbers")
    if plt is None:
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, label in zip(axes, ("psnr_dB", "samples_in_class_pct"), ("held-out PSNR (dB)", "samples in class (%)")):
        for kind in dict.fromkeys((r["size"], r["layout"], r["ordered"]) for r in rows):
            mine = [r for r in rows if (r["size"], r["layout"], r["ordered"]) == kind and r.get(key) is not None]
            if not mine:
                continue
            ax.errorbar([r["tokens"] for r in mine], [r[key][0] for r in mine], [r[key][1] or 0 for r in mine],
                        marker="o", capsize=3, label=f"{kind[0]} {kind[1]}" + (", ordered: first k of one model"
                                                                             if kind[2] else ""))
        ax.set(xlabel="tokens K", ylabel=label, xticks=sorted({r["tokens"] for r in rows}))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Fig. 4 in miniature: mean of {len(seeds)} seeds, bars: their standard deviation", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    script_config(globals())
    main()
