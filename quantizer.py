"""
Vector quantizer of TiTok: each latent token (a token_size-dim vector, 12 in the paper) is
l2-normalised and replaced by the nearest l2-normalised codebook entry. On the unit sphere the
nearest entry is the one with the largest cosine similarity, which makes the codebook easy to use
well (VQGAN-LC / ViT-VQGAN's "factorized, l2-normalised codes").
"""
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F


class VectorQuantizer(nn.Module):
    def __init__(self, codebook_size=4096, token_size=12, commitment_cost=0.25,
                 usage_window=1000, dead_code_restart=False):
        super().__init__()
        self.commitment_cost = commitment_cost
        self.usage_window = usage_window  # a code unused for this many training steps counts as dead
        self.dead_code_restart = dead_code_restart
        self.codebook = nn.Embedding(codebook_size, token_size)
        nn.init.uniform_(self.codebook.weight, -1.0 / codebook_size, 1.0 / codebook_size)
        # usage bookkeeping lives in buffers so that it is checkpointed and a resumed run is exact
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        # start "unused for a whole window", so that the usage statistic is honest from step 1
        self.register_buffer("last_used", torch.full((codebook_size,), -usage_window, dtype=torch.long))

    def lookup(self, codes):
        """codes (...,) -> unit-norm code vectors (..., token_size)."""
        return F.normalize(self.codebook(codes).float(), dim=-1)

    def quantize(self, z):
        """z (B, K, D) -> (z_quantized (B, K, D), codes (B, K), losses). No side effects."""
        # distances and losses in fp32 even under bf16 autocast: argmin over 4096 near-equal
        # cosines is not robust in bf16, and the codes must not depend on the precision
        with torch.autocast(z.device.type, enabled=False):
            z = F.normalize(z.float(), dim=-1)
            codebook = F.normalize(self.codebook.weight.float(), dim=-1)
            # squared euclidean distance, written out as the official implementation does so that
            # ties break identically (|z|^2 = |e|^2 = 1 up to rounding)
            d = (z.pow(2).sum(-1, keepdim=True) + codebook.pow(2).sum(-1)
                 - 2 * torch.einsum("bkd,nd->bkn", z, codebook))
            codes = d.argmin(-1)
            z_q = codebook[codes]
            losses = {
                "commitment": self.commitment_cost * F.mse_loss(z, z_q.detach()),  # pulls encoder to codes
                "codebook": F.mse_loss(z_q, z.detach()),  # pulls codes to encoder outputs
            }
            z_q = z + (z_q - z).detach()  # straight-through: forward = code, backward = identity
        return z_q, codes, losses

    def forward(self, z):
        """The training forward: quantize(z), and in training mode the usage bookkeeping (and dead-code
        restarts) -> (z_quantized, codes, losses, stats)."""
        z_q, codes, losses = self.quantize(z)
        stats = self._track_usage(codes, z) if self.training else {}
        return z_q, codes, losses, stats

    @torch.no_grad()
    def _track_usage(self, codes, z):
        # index_add and where rather than bincount and masked assignment: no host-device sync on CUDA
        counts = torch.zeros(self.codebook.num_embeddings, device=codes.device).index_add_(
            0, codes.flatten(), torch.ones(codes.numel(), device=codes.device))
        if dist.is_initialized():  # every rank must agree on usage, or restarts would diverge
            dist.all_reduce(counts)
        self.step += 1
        self.last_used.copy_(torch.where(counts > 0, self.step, self.last_used))
        p = counts / counts.sum()
        perplexity = torch.exp(-(p * torch.log(p.clamp_min(1e-10))).sum())
        dead = (self.step - self.last_used) >= self.usage_window
        if self.dead_code_restart and self.step >= self.usage_window and dead.any():
            self._restart(dead, F.normalize(z.float().reshape(-1, z.shape[-1]), dim=-1))
        return {"perplexity": perplexity, "usage": 1.0 - dead.float().mean()}

    def _restart(self, dead, z):
        """Re-seed dead codes with randomly chosen current (l2-normalised) encoder outputs, plus a little noise."""
        idx = dead.nonzero().squeeze(1)
        pick = torch.randint(0, z.shape[0], (idx.numel(),), device=z.device)
        new = z[pick] + 0.01 * torch.randn_like(z[pick])
        if dist.is_initialized():
            dist.broadcast(new, 0)  # all ranks take rank 0's samples so the codebooks stay identical
        self.codebook.weight.data[idx] = new.to(self.codebook.weight.dtype)
        self.last_used[idx] = self.step
