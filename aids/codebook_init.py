"""
The generator's codebook init, a small-budget aid (not in the paper; aids/__init__.py).
"""
import torch
import torch.nn.functional as F


@torch.no_grad()
def init_generator_from_codebook(model, codebook, rng=None):
    """Init only (same parameters): start a MaskGIT's C code embeddings and the C rows of its output head as
    two random projections of the tokenizer's code vectors (C, d). Codes the tokenizer put close together,
    which decode to nearly the same patch, then start with nearly the same embedding and logit, so what the
    model learns about one code reaches its neighbours from the first step. Entries have the usual std 0.02."""
    C, H = model.config.codebook_size, model.config.hidden_size
    if codebook.shape[0] != C:
        raise ValueError(f"the codebook has {codebook.shape[0]} codes, the generator {C}")
    codebook = F.normalize(codebook.float(), dim=-1)  # unit rows: each projected entry has std 0.02
    proj = torch.randn(2, codebook.shape[1], H, device=codebook.device, generator=rng) * 0.02
    model.tok_emb.weight[:C] = codebook @ proj[0]
    model.lm_head.weight.copy_(codebook @ proj[1])
    return model
