"""
MaskGIT generator over TiTok's 1D codes: a bidirectional transformer reads [class token, K image
tokens] where some image tokens are the mask token, and predicts the codebook entry of every
position. Sampling starts from all-masked and, over a few steps, fixes the most confident
predictions (MaskGIT's arccos schedule) with classifier-free guidance.

Token space (that of the released models): 0..C-1 image codes, C the mask token, C+1..C+n the
classes, C+n+1 the null class of classifier-free guidance (C = codebook size, n = classes).
Two bodies: 'ViT', the paper's Hugging Face BERT layout (post-LN, LayerNorm eps 1e-12), used by
the released L-32 and B-64 generators; 'UViT', pre-LN blocks with long skips, used by S-128.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from checkpoints import checkpoint_file, existing, load_exact, read_checkpoint
from model import MLP, Attention, Block

GUIDANCE_DECAYS = ("constant", "linear", "power-cosine")
MODEL_TYPES = ("ViT", "UViT")
LABEL_SMOOTHING = 0.1  # the paper's (and the official training recipe's)


@dataclass
class MaskGITConfig:
    codebook_size: int = 4096  # C
    num_tokens: int = 32  # K, the tokenizer's sequence length
    num_classes: int = 1000  # n
    hidden_size: int = 768
    depth: int = 24
    heads: int = 16
    mlp_dim: int = 3072
    dropout: float = 0.1
    attn_dropout: float = 0.1
    class_dropout: float = 0.1  # training: share of labels replaced by the null class
    model_type: str = "ViT"  # 'ViT' (BERT layout) or 'UViT'
    # sampling defaults (those of the released L-32 generator)
    num_steps: int = 8
    guidance_scale: float = 4.5
    guidance_decay: str = "linear"
    guidance_scale_pow: float = 3.0  # only for 'power-cosine'
    randomize_temperature: float = 9.5
    softmax_temperature_annealing: bool = False


class BertBlock(nn.Module):
    """Post-LN transformer layer (BERT): x = ln(x + attn(x)), then x = ln(x + mlp(x))."""

    def __init__(self, dim, heads, hidden, dropout, attn_dropout):
        super().__init__()
        self.attn = Attention(dim, heads, dropout=attn_dropout)
        self.drop = nn.Dropout(dropout)
        self.ln_1 = nn.LayerNorm(dim, eps=1e-12)
        self.mlp = MLP(dim, hidden, dropout)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-12)

    def forward(self, x):
        x = self.ln_1(x + self.drop(self.attn(x)))
        return self.ln_2(x + self.mlp(x))


class SkipBlock(Block):
    """U-ViT decoder-side block: first merge the long skip from the matching input-side block."""

    def __init__(self, dim, heads, mlp_ratio):
        super().__init__(dim, heads, mlp_ratio, qkv_bias=False)
        self.skip_linear = nn.Linear(2 * dim, dim)

    def forward(self, x, skip):
        return super().forward(self.skip_linear(torch.cat([x, skip], dim=-1)))


def mask_schedule(num_tokens, num_steps):
    """Number of masked tokens before each sampling step: the arccos schedule, so that every step
    fixes at least one token and at least one is left for the last step, which fixes all."""
    counts = [num_tokens]
    for step in range(num_steps - 1):
        ratio = (step + 1) / num_steps
        wanted = math.floor(num_tokens * (math.acos(ratio) / (math.pi * 0.5)))
        counts.append(max(1, min(counts[-1] - 1, wanted)))
    return counts


def guidance_weight(step, num_steps, scale, decay, scale_pow):
    """w in logits = cond + w * (cond - uncond) at `step`, ramped up from 0 by `decay` (host float: no sync)."""
    t = step / num_steps  # the official ramps use the previous step's ratio: step 0 is unguided
    if decay == "constant":
        return scale
    if decay == "linear":  # MUSE
        return scale * t
    # MDT's power-cosine gives s in uncond + s * (cond - uncond), i.e. w = s - 1
    return (scale - 1) * (1 - math.cos(math.pi * t ** scale_pow)) / 2


def gumbel_noise(shape, device, rng):
    log = lambda x: torch.log(x.clamp(min=1e-20))  # the official clamp
    return -log(-log(torch.rand(shape, device=device, generator=rng)))


def loss(logits, codes, mask, unmasked_weight=0.0, label_smoothing=LABEL_SMOOTHING):
    """Cross-entropy with label smoothing on the masked positions. The official training recipe
    also weighs the unmasked (given) positions by 0.1; that is `unmasked_weight`."""
    ce = F.cross_entropy(logits.flatten(0, 1).float(), codes.flatten(), label_smoothing=label_smoothing,
                         reduction="none")
    weight = torch.where(mask.flatten(), 1.0, unmasked_weight)
    return (ce * weight).sum() / weight.sum()


class MaskGIT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        if cfg.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {MODEL_TYPES}, not {cfg.model_type!r}")
        self.config = cfg
        H, C, n = cfg.hidden_size, cfg.codebook_size, cfg.num_classes
        self.tok_emb = nn.Embedding(C + n + 2, H)
        self.pos_emb = nn.Parameter(torch.zeros(cfg.num_tokens + 1, H))
        if cfg.model_type == "ViT":
            self.ln_emb = nn.LayerNorm(H, eps=1e-12)
            self.drop = nn.Dropout(cfg.dropout)
            self.blocks = nn.ModuleList(BertBlock(H, cfg.heads, cfg.mlp_dim, cfg.dropout, cfg.attn_dropout)
                                        for _ in range(cfg.depth))
        else:  # U-ViT: depth//2 blocks in, one in the middle, depth//2 out; no dropout
            ratio = cfg.mlp_dim / H
            self.in_blocks = nn.ModuleList(Block(H, cfg.heads, ratio, qkv_bias=False) for _ in range(cfg.depth // 2))
            self.mid_block = Block(H, cfg.heads, ratio, qkv_bias=False)
            self.out_blocks = nn.ModuleList(SkipBlock(H, cfg.heads, ratio) for _ in range(cfg.depth // 2))
            self.ln_f = nn.LayerNorm(H)
        self.lm_head = nn.Linear(H, C)  # logits over the image codes only
        self.apply(self._init_weights)
        nn.init.trunc_normal_(self.pos_emb, std=0.02)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.trunc_normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, ids, labels):
        """ids (B, K) in 0..C (C = masked), labels (B,) in 0..n (n = null class) -> logits (B, K, C)."""
        C = self.config.codebook_size
        x = self.tok_emb(torch.cat([labels[:, None] + C + 1, ids], dim=1)) + self.pos_emb
        if self.config.model_type == "ViT":
            x = self.drop(self.ln_emb(x))
            for block in self.blocks:
                x = block(x)
        else:
            skips = []
            for block in self.in_blocks:
                x = block(x)
                skips.append(x)
            x = self.mid_block(x)
            for block in self.out_blocks:
                x = block(x, skips.pop())
            x = self.ln_f(x)
        return self.lm_head(x[:, 1:])  # drop the class position

    # ------------------------------------------------------------------------------------------
    # training

    def random_mask(self, codes, rng=None):
        """Mask a fraction arccos(u)*2/pi (u ~ U(0,1), at least one token) of each sample's codes.
        Returns (input ids with the mask token C, bool mask)."""
        B, K = codes.shape
        u = torch.rand(B, device=codes.device, generator=rng)
        ratio = (torch.acos(u) / (math.pi * 0.5)).clamp(1e-6, 1.0)
        count = (K * ratio).round().clamp(min=1)
        rank = torch.rand(B, K, device=codes.device, generator=rng).argsort(dim=-1)  # a random order
        mask = rank < count[:, None]
        return torch.where(mask, self.config.codebook_size, codes), mask

    def drop_labels(self, labels, rng=None):
        """Replace a share class_dropout of the labels by the null class, to learn the unconditional model."""
        drop = torch.rand(labels.shape, device=labels.device, generator=rng) < self.config.class_dropout
        return torch.where(drop, self.config.num_classes, labels)

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        # decay the weights of linear layers; not biases, norms, embeddings
        decay = {id(m.weight) for m in self.modules() if isinstance(m, nn.Linear)}
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if id(p) in decay], "weight_decay": weight_decay},
                  {"params": [p for p in params if id(p) not in decay], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=device_type == "cuda")

    # ------------------------------------------------------------------------------------------
    # sampling

    @torch.no_grad()
    def generate(self, labels, num_steps=None, guidance_scale=None, guidance_decay=None, guidance_scale_pow=None,
                 randomize_temperature=None, softmax_temperature_annealing=None, rng=None, fixed_shape=False):
        """labels (B,) in 0..n-1 -> codes (B, K). Unset arguments take the config's sampling defaults.
        `fixed_shape`: a guided sampling runs the unconditional half at every step, also where its weight is 0
        (the same codes): one batch shape, so that a compiled forward compiles once. Call it in eval mode."""
        cfg = self.config
        num_steps = num_steps or cfg.num_steps
        scale = cfg.guidance_scale if guidance_scale is None else guidance_scale
        decay = guidance_decay or cfg.guidance_decay
        scale_pow = cfg.guidance_scale_pow if guidance_scale_pow is None else guidance_scale_pow
        temperature = cfg.randomize_temperature if randomize_temperature is None else randomize_temperature
        anneal = cfg.softmax_temperature_annealing if softmax_temperature_annealing is None else softmax_temperature_annealing
        if decay not in GUIDANCE_DECAYS:
            raise ValueError(f"guidance_decay must be one of {GUIDANCE_DECAYS}, not {decay!r}")
        device = self.lm_head.weight.device
        labels = torch.as_tensor(labels, device=device).long()
        # the range check reads the labels on the host: skip it inside torch.compile (tools/bench.py's sampler)
        # so that the compiled sampling loop has no host sync and no graph break
        if not torch.compiler.is_compiling() and labels.numel() and (labels.min() < 0 or labels.max() >= cfg.num_classes):
            raise ValueError(f"class labels must be in [0, {cfg.num_classes}), got {labels.tolist()}")

        B, K, C = labels.shape[0], cfg.num_tokens, cfg.codebook_size
        ids = torch.full((B, K), C, device=device)
        null = torch.full_like(labels, cfg.num_classes)
        schedule = mask_schedule(K, num_steps)  # known in advance: no sync to count masked tokens
        weights = [guidance_weight(step, num_steps, scale, decay, scale_pow) for step in range(num_steps)]
        for step, w in enumerate(weights):
            ratio = (step + 1) / num_steps
            # the logits in fp32 from here on: w magnifies bf16's rounding of cond - uncond before the noise
            if w != 0 or (fixed_shape and any(weights)):  # conditional and unconditional in one batch
                cond, uncond = self(torch.cat([ids, ids]), torch.cat([labels, null])).float().chunk(2)
                logits = cond + (cond - uncond) * w if w != 0 else cond
            else:
                logits = self(ids, labels).float()
            if anneal:
                logits = logits / (0.5 + 0.8 * (1 - ratio))

            # sample every position (Gumbel-max), with noise that anneals to zero at the last step
            t = temperature * (1 - ratio)
            noisy = logits + t * gumbel_noise(logits.shape, device, rng) if t > 0 else logits
            sampled = noisy.argmax(dim=-1)
            is_mask = ids == C
            sampled = torch.where(is_mask, sampled, ids)  # fixed tokens stay fixed
            if step == num_steps - 1:
                ids = sampled
            else:
                # re-mask the least confident new tokens (their logit, plus noise); fixed ones are +inf
                confidence = torch.gather(logits, -1, sampled[..., None]).squeeze(-1)
                confidence = torch.where(is_mask, confidence, math.inf)
                if t > 0:
                    confidence = confidence + t * gumbel_noise(confidence.shape, device, rng)
                cut_off = confidence.kthvalue(schedule[step + 1], dim=-1, keepdim=True).values
                ids = torch.where(confidence <= cut_off, C, sampled)
        return ids


def load_generator(path):
    """(MaskGIT in eval mode, training config) from train_generator.py's ckpt.pt or its directory, or
    (MaskGIT, {}) from a released generator directory or its Hugging Face repo id (released/maskgit.py, imported
    only then)."""
    file = checkpoint_file(existing(path, "generator checkpoint"))
    if file is not None:
        checkpoint = read_checkpoint(file, "generator")  # a damaged or foreign file: ValueError, named
        model = MaskGIT(MaskGITConfig(**checkpoint["model_args"]))
        load_exact(model, checkpoint["model"], str(file))
        return model.eval(), checkpoint.get("config", {})
    from released.maskgit import load_released_generator
    return load_released_generator(path).eval(), {}
