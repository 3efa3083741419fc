"""
TiTok's bottlenecks. VectorQuantizer (the paper's): each latent token (a token_size-dim vector, 12 in
the paper) is l2-normalised and replaced by the nearest l2-normalised codebook entry. On the unit sphere
the nearest entry is the one with the largest cosine similarity, which makes the codebook easy to use
well (VQGAN-LC / ViT-VQGAN's "factorized, l2-normalised codes"); the released VQ-8k models use raw
vectors instead (use_l2_norm=False). FiniteScalarQuantizer (FSQ, not in the paper): a fixed grid instead of
a learned codebook, which cannot collapse. GaussianBottleneck: the released VAE models' continuous tokens.
CodebookUpkeep, last: what training does to the codebook besides gradients (usage, dead-code restart,
the official clustering_vq); the model works without it.
"""
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F


class VectorQuantizer(nn.Module):
    def __init__(self, codebook_size=4096, token_size=12, commitment_cost=0.25, use_l2_norm=True):
        super().__init__()
        self.commitment_cost, self.use_l2_norm = commitment_cost, use_l2_norm
        self.codebook = nn.Embedding(codebook_size, token_size)
        nn.init.uniform_(self.codebook.weight, -1.0 / codebook_size, 1.0 / codebook_size)
        self.upkeep = None  # a CodebookUpkeep, which the tokenizer trainers attach

    def norm(self, x):
        return F.normalize(x, dim=-1) if self.use_l2_norm else x

    def decode(self, codes):
        """codes (...,) -> their code vectors (..., token_size) (unit-norm with use_l2_norm)."""
        return self.norm(self.codebook(codes).float())

    def encode(self, z):
        """Encoder outputs (B, K, D) -> codes (B, K): what a tokenizer's encode() returns."""
        return self.quantize(z)[1]

    def quantize(self, z):
        """z (B, K, D) -> (z_quantized (B, K, D), codes (B, K), losses). No side effects."""
        # fp32 even under bf16 autocast: the argmin over thousands of near-equal cosines is not robust in bf16
        with torch.autocast(z.device.type, enabled=False):
            z = self.norm(z.float())
            codebook = self.norm(self.codebook.weight.float())
            codes = self.nearest(z, codebook)
            z_q = codebook[codes]
            losses = {
                "commitment": self.commitment_cost * F.mse_loss(z, z_q.detach()),  # pulls encoder to codes
                "codebook": F.mse_loss(z_q, z.detach()),  # pulls codes to encoder outputs
            }
            z_q = z + (z_q - z).detach()  # straight-through: forward = code, backward = identity
        return z_q, codes, losses

    @staticmethod
    @torch.no_grad()
    def nearest(z, codebook):
        """The index of the nearest code to each token, z (..., D) -> (...). The squared distance is written out
        as the official implementation does, so that ties break identically."""
        flat = z.reshape(-1, z.shape[-1])
        # on a CPU, a few tokens at a time: their distances to every code stay in the cache
        rows = len(flat) if z.is_cuda else max(1, 2 ** 18 // len(codebook))
        c2 = codebook.pow(2).sum(-1)
        codes = [(part.pow(2).sum(-1, keepdim=True) + c2 - 2 * part @ codebook.T).argmin(-1)
                 for part in flat.split(rows)]
        return torch.cat(codes).view(z.shape[:-1])

    def forward(self, z):
        """quantize(z); in training mode the upkeep (if attached) also sees the codes -> (z_q, codes, losses)."""
        z_q, codes, losses = self.quantize(z)
        if self.training and self.upkeep is not None:
            self.upkeep.observe(self, codes, z)
        return z_q, codes, losses


class FiniteScalarQuantizer(nn.Module):
    """FSQ (Mentzer et al. 2023, arXiv 2309.15505; not in the paper): each of a token's len(levels) dims is squashed
    by a tanh to levels[i] values and rounded, straight-through. The codebook is that fixed grid, prod(levels) codes,
    each an integer by mixed radix (read as VQ codes are): nothing is learned, nothing can collapse, no loss."""

    def __init__(self, levels):
        super().__init__()
        levels = torch.tensor(levels)
        self.register_buffer("levels", levels, persistent=False)  # fixed by the config: not in the weights
        self.register_buffer("radix", torch.cumprod(torch.cat([levels.new_ones(1), levels[:-1]]), 0), persistent=False)
        self.upkeep = None  # a CodebookUpkeep (usage only), which the tokenizer trainer attaches

    def grid(self, z):
        """z (..., D) -> each dim squashed into a range whose rounding gives L values, -(L // 2) to (L - 1) // 2."""
        half, offset = (self.levels - 1) * (1 - 1e-3) / 2, (self.levels % 2 == 0) * 0.5  # an even L: half a step down
        # the reference's input shift: z = 0 lands near 0, not on a rounding tie (atanh is undefined for L = 2)
        return torch.tanh(z + torch.tan(offset / half)) * half - offset

    def decode(self, codes):
        """codes (...,) -> their grid points (..., D), each dim in [-1, 1]."""
        return (codes[..., None] // self.radix % self.levels - self.levels // 2) / (self.levels // 2)

    def encode(self, z):
        return self.quantize(z)[1]

    def quantize(self, z):
        """z (B, K, D) -> (z_quantized (B, K, D), codes (B, K), no losses). No side effects."""
        with torch.autocast(z.device.type, enabled=False):
            z = self.grid(z.float())
            codes = ((z.round().long() + self.levels // 2) * self.radix).sum(-1)
            z_q = z + (z.round() - z).detach()  # straight-through: forward = rounded, backward = identity
        return z_q / (self.levels // 2), codes, {}

    def forward(self, z):
        z_q, codes, losses = self.quantize(z)
        if self.training and self.upkeep is not None:
            self.upkeep.observe(self, codes, z)
        return z_q, codes, losses


class GaussianBottleneck(nn.Module):
    """The released VAE tokenizers' bottleneck: the encoder gives 2 * token_size numbers per latent token,
    a mean and a log-variance (clamped to [-30, 20], as official); training decodes a sample mean + std * eps
    and pays the KL to N(0, I); encode() is the mean, and decode() reads a latent as it is. No parameters."""

    upkeep = None  # no codebook to keep up

    def posterior(self, z):
        """z (B, K, 2D) -> mean, logvar (B, K, D), in fp32."""
        mean, logvar = z.float().chunk(2, dim=-1)
        return mean, logvar.clamp(-30.0, 20.0)

    @staticmethod
    def kl(mean, logvar):
        """KL(N(mean, exp(logvar)) || N(0, I)) per token (B, K), summed over its dims."""
        return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)

    def encode(self, z):
        return self.posterior(z)[0]

    def decode(self, latent):
        return latent.float()

    def forward(self, z):
        """-> (latent, None, {"kl": KL summed over tokens, mean over images (official)}). Training mode samples
        the latent; eval mode takes the mean."""
        with torch.autocast(z.device.type, enabled=False):
            mean, logvar = self.posterior(z)
            latent = mean + (0.5 * logvar).exp() * torch.randn_like(mean) if self.training else mean
            return latent, None, {"kl": self.kl(mean, logvar).sum() / len(z)}


# ----------------------------------------------------------------------------------------------
# The codebook's upkeep in training


def perplexity(counts):
    """exp(entropy) of the code distribution: the number of equally used codes it is worth."""
    p = counts / counts.sum()
    return torch.exp(-(p * torch.log(p.clamp_min(1e-10))).sum())


class CodebookUpkeep(nn.Module):
    """Counts which codes each optimizer step used (the logged usage and perplexity), and optionally re-seeds
    codes unused for `usage_window` steps at encoder outputs (dead_code_restart, a small-budget aid) or pulls
    rarely used codes towards encoder outputs (clustering_vq: the official recipe of the VQ-8k models).
    quantizer.upkeep = CodebookUpkeep(...); training forward passes call observe(); the trainer calls end_step().
    What a micro-step adds lives in buffers of fixed size, so that a compiled forward is one graph whatever the
    micro-step; dead-code restart alone keeps the step's outputs in a list (a CPU aid, not compiled)."""

    def __init__(self, codebook_size, usage_window=1000, dead_code_restart=False, clustering_vq=False, token_size=None):
        super().__init__()
        self.usage_window, self.dead_code_restart, self.clustering_vq = usage_window, dead_code_restart, clustering_vq
        # buffers, so that a resumed run is exact; `step` counts optimizer steps, whatever the micro-steps
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        # start "unused for a whole window", so that the usage statistic is honest from step 1
        self.register_buffer("last_used", torch.full((codebook_size,), -usage_window, dtype=torch.long))
        # this step's so far, this process's only (not saved, never broadcast): the code counts, ...
        self.register_buffer("counts", torch.zeros(codebook_size), persistent=False)
        if clustering_vq:
            if token_size is None:
                raise ValueError("clustering_vq keeps an encoder output per code: pass token_size")
            self.register_buffer("embed_prob", torch.zeros(codebook_size))  # the running mean of each code's share
            # ... the encoder output nearest to each code and its distance, ...
            self.register_buffer("nearest_output", torch.zeros(codebook_size, token_size), persistent=False)
            self.register_buffer("nearest_dist", torch.full((codebook_size,), float("inf")), persistent=False)
        self.outputs = []  # ... and for dead-code restart, every encoder output

    @torch.no_grad()
    def observe(self, quantizer, codes, z):
        # index_add rather than bincount: no host-device sync on CUDA; in place: one compiled graph every micro-step
        self.counts.index_add_(0, codes.flatten(), torch.ones(codes.numel(), device=codes.device))
        z = z.detach().float().reshape(-1, z.shape[-1])
        if self.dead_code_restart:
            self.outputs.append(z)
        if self.clustering_vq:  # the first nearest output wins a tie, as an argmin over the whole step's would
            with torch.autocast(z.device.type, enabled=False):  # distances in fp32, as the quantizer's
                dist_, nearest = nearest_outputs(quantizer.norm(z), quantizer.norm(quantizer.codebook.weight.float()))
            closer = dist_ < self.nearest_dist
            self.nearest_dist.copy_(torch.where(closer, dist_, self.nearest_dist))
            self.nearest_output.copy_(torch.where(closer[:, None], z[nearest], self.nearest_output))

    @torch.no_grad()
    def end_step(self, quantizer, optimizer=None):
        """Once per optimizer step, after optimizer.step(): count the codes that the step's forward passes (every
        micro-step of every rank) used; re-seed the dead ones, with fresh moments in `optimizer` (AdamW's);
        or cluster. -> {"perplexity", "usage", "restarted": the re-seeded codes' indices}."""
        counts, outputs = self.counts.clone(), self.outputs
        self.counts.zero_()
        self.outputs = []
        if dist.is_initialized():  # every rank must agree on usage, or restarts would diverge
            dist.all_reduce(counts)
        self.step += 1
        self.last_used.copy_(torch.where(counts > 0, self.step, self.last_used))
        dead = (self.step - self.last_used) >= self.usage_window
        stats = {"perplexity": perplexity(counts), "usage": 1.0 - dead.float().mean(), "restarted": None}
        if self.dead_code_restart and self.step >= self.usage_window and dead.any():
            stats["restarted"] = self._restart(quantizer, dead, quantizer.norm(self._gather(outputs)))
            state = optimizer.state.get(quantizer.codebook.weight, {}) if optimizer is not None else {}
            for moment in ("exp_avg", "exp_avg_sq"):
                if moment in state:
                    state[moment][dead] = 0
        if self.clustering_vq:
            self._cluster(quantizer, counts)
        return stats

    @staticmethod
    def _gather(outputs):
        """This step's encoder outputs, of every rank, in the order one process would have seen them:
        rank r's micro-step m is one process's micro-step m * world_size + r (data.batch_indices)."""
        z = torch.stack(outputs)  # micro-steps, tokens, D
        if dist.is_initialized():
            parts = [torch.empty_like(z) for _ in range(dist.get_world_size())]
            dist.all_gather(parts, z)
            z = torch.stack(parts, 1)  # micro-steps, ranks, tokens, D
        return z.reshape(-1, z.shape[-1])

    def _restart(self, quantizer, dead, z):
        """Re-seed dead codes with randomly chosen encoder outputs of this step (plus a little noise). The
        random numbers are a function of the step alone: the same on every rank and after a resume."""
        idx = dead.nonzero().squeeze(1)
        g = torch.Generator(z.device).manual_seed(int(self.step))
        pick = torch.randint(0, z.shape[0], (idx.numel(),), device=z.device, generator=g)
        new = z[pick] + 0.01 * torch.randn(z[pick].shape, device=z.device, generator=g)
        quantizer.codebook.weight.data[idx] = new.to(quantizer.codebook.weight.dtype)
        self.last_used[idx] = self.step
        return idx

    def _cluster(self, quantizer, counts, decay=0.99):
        """The official clustering_vq (after CVQ-VAE): each code moves towards the encoder output of this step
        nearest to it (of every rank's: the lowest rank's on a tie), by a weight that is ~1 for a code used by no
        token lately and ~0 for one used by more than a tiny share; once a step here (official: once a forward)."""
        nearest, distance = self.nearest_output.clone(), self.nearest_dist.clone()
        self.nearest_dist.fill_(float("inf"))
        if dist.is_initialized():
            parts = [[torch.empty_like(x) for _ in range(dist.get_world_size())] for x in (nearest, distance)]
            dist.all_gather(parts[0], nearest)
            dist.all_gather(parts[1], distance)
            rank = torch.stack(parts[1]).argmin(0)
            nearest = torch.stack(parts[0])[rank, torch.arange(len(rank), device=rank.device)]
        self.embed_prob.mul_(decay).add_(counts / counts.sum(), alpha=1 - decay)
        w = torch.exp(-self.embed_prob * len(self.embed_prob) * 10 / (1 - decay) - 1e-3)[:, None]
        quantizer.codebook.weight.data.mul_(1 - w).add_(w * nearest)


def nearest_outputs(z, codebook, block=1024):
    """For each code, the nearest of the tokens z (N, D) and its squared distance -> (distances (C,), indices (C,)),
    `block` codes at a time: tokens x codes floats at once would not fit."""
    z2, found = z.pow(2).sum(-1, keepdim=True), []
    for c in codebook.split(block):
        d = z2 + c.pow(2).sum(-1) - 2 * z @ c.T
        i = d.argmin(0)
        found.append((d.gather(0, i[None])[0], i))
    return torch.cat([d for d, _ in found]), torch.cat([i for _, i in found])
