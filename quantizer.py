"""
TiTok's bottlenecks. VectorQuantizer (the paper's): each latent token (a token_size-dim vector, 12 in
the paper) is l2-normalised and replaced by the nearest l2-normalised codebook entry. On the unit sphere
the nearest entry is the one with the largest cosine similarity, which makes the codebook easy to use
well (VQGAN-LC / ViT-VQGAN's "factorized, l2-normalised codes"); the released VQ-8k models use raw
vectors instead (use_l2_norm=False). GaussianBottleneck: the released VAE models' continuous tokens.
"""
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F


class VectorQuantizer(nn.Module):
    def __init__(self, codebook_size=4096, token_size=12, commitment_cost=0.25,
                 usage_window=1000, dead_code_restart=False, use_l2_norm=True, clustering_vq=False):
        super().__init__()
        self.commitment_cost, self.use_l2_norm, self.clustering_vq = commitment_cost, use_l2_norm, clustering_vq
        self.usage_window = usage_window  # a code unused for this many training steps counts as dead
        self.dead_code_restart = dead_code_restart
        self.codebook = nn.Embedding(codebook_size, token_size)
        nn.init.uniform_(self.codebook.weight, -1.0 / codebook_size, 1.0 / codebook_size)
        # usage bookkeeping lives in buffers so that it is checkpointed and a resumed run is exact. `step`
        # counts optimizer steps (end_step), so that usage_window means the same whatever the number of
        # processes and micro-steps
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        # start "unused for a whole window", so that the usage statistic is honest from step 1
        self.register_buffer("last_used", torch.full((codebook_size,), -usage_window, dtype=torch.long))
        if clustering_vq:  # the running mean of each code's share of the tokens (clustering_vq)
            self.register_buffer("embed_prob", torch.zeros(codebook_size))
        # this step's code counts and encoder outputs so far, this process's only: plain attributes, not
        # buffers, which DDP would overwrite with rank 0's at every forward
        self.counts, self.outputs = None, []

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
        # distances and losses in fp32 even under bf16 autocast: argmin over 4096 near-equal
        # cosines is not robust in bf16, and the codes must not depend on the precision
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
        """The index of the nearest code to each token, z (B, K, D) -> (B, K). The squared euclidean distance is
        written out as the official implementation does, so that ties break identically. On a CPU it is taken
        for a few tokens at a time, so that their distances to every code stay in the cache: at 16,384 codes
        the whole (B, K, codes) tensor is 67 MB for 32 images, and a photo-recipe quantize call took 48 ms
        with it against 22 ms in chunks."""
        flat = z.reshape(-1, z.shape[-1])
        rows = len(flat) if z.is_cuda else max(1, 2 ** 18 // len(codebook))
        c2 = codebook.pow(2).sum(-1)
        codes = [(part.pow(2).sum(-1, keepdim=True) + c2 - 2 * part @ codebook.T).argmin(-1)
                 for part in flat.split(rows)]
        return torch.cat(codes).view(z.shape[:-1])

    def forward(self, z):
        """The training forward: quantize(z), and in training mode the usage bookkeeping that end_step() reads
        -> (z_quantized, codes, losses)."""
        z_q, codes, losses = self.quantize(z)
        if self.training:
            self._track_usage(codes, z)
        return z_q, codes, losses

    @torch.no_grad()
    def _track_usage(self, codes, z):
        # index_add rather than bincount: no host-device sync on CUDA
        counts = torch.zeros(self.codebook.num_embeddings, device=codes.device).index_add_(
            0, codes.flatten(), torch.ones(codes.numel(), device=codes.device))
        self.counts = counts if self.counts is None else self.counts + counts
        if self.dead_code_restart or self.clustering_vq:
            self.outputs.append(z.detach().float().reshape(-1, z.shape[-1]))

    @torch.no_grad()
    def end_step(self, optimizer=None):
        """Once per optimizer step, after optimizer.step(): count the codes that the step's forward passes (every
        micro-step of every rank) used, and re-seed the dead ones, whose moments in `optimizer` (AdamW's) are
        reset, so that a re-seeded code starts fresh (or pull the rarely used ones towards encoder outputs:
        clustering_vq). -> {"perplexity", "usage"} of the whole step."""
        counts, outputs = self.counts, self.outputs
        self.counts, self.outputs = None, []
        if dist.is_initialized():  # every rank must agree on usage, or restarts would diverge
            dist.all_reduce(counts)
        self.step += 1
        self.last_used.copy_(torch.where(counts > 0, self.step, self.last_used))
        dead = (self.step - self.last_used) >= self.usage_window
        stats = {"perplexity": perplexity(counts), "usage": 1.0 - dead.float().mean()}
        if self.dead_code_restart and self.step >= self.usage_window and dead.any():
            self._restart(dead, self.norm(self._gather(outputs)))
            state = optimizer.state.get(self.codebook.weight, {}) if optimizer is not None else {}
            for moment in ("exp_avg", "exp_avg_sq"):
                if moment in state:
                    state[moment][dead] = 0
        if self.clustering_vq:
            self._cluster(counts, self._gather(outputs))
        return stats

    @torch.no_grad()
    def refit(self, z, steps=2):
        """k-means on encoder outputs z (N, D) (Lloyd's steps; on the sphere with use_l2_norm): each code that
        some output is nearest to moves to their mean, and each other code is re-seeded at a random output (the
        random numbers a function of the step alone), so every code serves the outputs. A step never increases
        the outputs' mean distance to their codes. -> (codes moved, codes re-seeded) at the last step."""
        z = self.norm(z.float())
        for step in range(steps):
            codebook = self.norm(self.codebook.weight.float())
            codes = torch.cat([self.nearest(part, codebook) for part in z.split(4096)])  # bounded memory on CUDA
            counts = torch.bincount(codes, minlength=self.codebook.num_embeddings)
            new = torch.zeros_like(codebook).index_add_(0, codes, z) / counts.clamp_min(1)[:, None]
            empty = (counts == 0).nonzero().squeeze(1)
            g = torch.Generator(z.device).manual_seed(step)
            new[empty] = z[torch.randint(0, len(z), (len(empty),), device=z.device, generator=g)]
            self.codebook.weight.data.copy_(new)
        return int((counts > 0).sum()), len(empty)

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

    def _restart(self, dead, z):
        """Re-seed dead codes with randomly chosen encoder outputs of this step (plus a little noise). The
        random numbers are a function of the step alone, not of the global random state: the same on every
        rank (each holds every rank's outputs) and after a resume, whatever else drew random numbers."""
        idx = dead.nonzero().squeeze(1)
        g = torch.Generator(z.device).manual_seed(int(self.step))
        pick = torch.randint(0, z.shape[0], (idx.numel(),), device=z.device, generator=g)
        new = z[pick] + 0.01 * torch.randn(z[pick].shape, device=z.device, generator=g)
        self.codebook.weight.data[idx] = new.to(self.codebook.weight.dtype)
        self.last_used[idx] = self.step


    def _cluster(self, counts, z, decay=0.99):
        """The official clustering_vq (the released VQ-8k models' recipe, after CVQ-VAE): each code moves towards
        the encoder output of this step nearest to it, by a weight that is ~1 for a code used by no token lately
        and ~0 for one used by more than a tiny share; once a step here (official: once a forward)."""
        self.embed_prob.mul_(decay).add_(counts / counts.sum(), alpha=1 - decay)
        zn, codebook = self.norm(z), self.norm(self.codebook.weight.float())
        d = zn.pow(2).sum(-1, keepdim=True) + codebook.pow(2).sum(-1) - 2 * zn @ codebook.T
        w = torch.exp(-self.embed_prob * len(codebook) * 10 / (1 - decay) - 1e-3)[:, None]
        self.codebook.weight.data.mul_(1 - w).add_(w * z[d.argmin(0)])


def perplexity(counts):
    """exp(entropy) of the code distribution: the number of equally used codes it is worth."""
    p = counts / counts.sum()
    return torch.exp(-(p * torch.log(p.clamp_min(1e-10))).sum())


class GaussianBottleneck(nn.Module):
    """The released VAE tokenizers' bottleneck: the encoder gives 2 * token_size numbers per latent token,
    a mean and a log-variance (clamped to [-30, 20], as official); training decodes a sample mean + std * eps
    and pays the KL to N(0, I); encode() is the mean, and decode() reads a latent as it is. No parameters."""

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

    def end_step(self, optimizer=None):
        return {}  # no codebook to keep up
