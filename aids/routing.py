"""
The routing init, a small-budget aid (not in the paper; aids/__init__.py): with the default init every
attention is near uniform, so every latent holds the same blend of the image and a small 1D tokenizer learns
only the mean image for its first ~1,500 steps. Here the first block of each ViT starts as a router between
latents and patches; the architecture is unchanged and free to learn global tokens.
"""
import torch


def check_routing(cfg, scatter):
    """The configurations the routing init can route; ValueError (one line) for the others."""
    n, d = cfg.grid_size ** 2, cfg.width // cfg.heads
    if cfg.layout != "1d":
        raise ValueError("routing_init routes the latent tokens of layout '1d'; layout '2d' has none: set routing_init=False")
    if (cfg.width, cfg.heads) != (cfg.decoder_width, cfg.decoder_heads):
        raise ValueError("routing_init routes between an encoder and a decoder of one width and head count: set "
                         "routing_init=False, or the decoder's size to the encoder's")
    if scatter and (cfg.grid_size % 2 or d <= n):
        raise ValueError(f"routing_scatter needs an even grid of patches and more dims per head than patches; "
                         f"{cfg.grid_size}x{cfg.grid_size} patches with {d} dims per head is not that")
    if scatter and cfg.num_latent_tokens * cfg.heads < n:
        raise ValueError(f"routing_scatter routes one patch per head: num_latent_tokens={cfg.num_latent_tokens} latents x "
                         f"{cfg.heads} heads do not cover the {n} patches; set num_latent_tokens to {-(-n // cfg.heads)} "
                         "or more")


def scatter_routes(K, heads, g):
    """The scatter plan for K latents of `heads` heads on a g x g grid (g even): reads[j][h], the patch that
    latent j reads in head h (a latent's heads take patches in turn from the four quadrants), and reader[p][h],
    the latent that mask token p reads in head h (its readers, in equal shares of its heads)."""
    n, half = g * g, g // 2
    order = [(q // 2 * half + i // half) * g + q % 2 * half + i % half for i in range(half * half) for q in range(4)]
    reads = [[order[(s + s // n) % n] for s in range(j * heads, (j + 1) * heads)] for j in range(K)]
    readers = [sorted({j for j in range(K) if p in reads[j]}) for p in range(n)]
    return reads, [[r[h * len(r) // heads] for h in range(heads)] for r in readers]


@torch.no_grad()
def route_by_position(model, scatter=False, gain=3.0, copy=4.0):
    """In place, on a freshly built TiTok: in the first block of each ViT, latent j gets the position of patch
    j*g*g//K turned by a random rotation R (so that it reads its patch and not itself), attention scores
    R*position against position, and value and output projections copy what is read; each mask token reads
    the latents of its patch. `scatter`: each head routes on its own dims, latent j reading one patch per head,
    patches that lie apart (scatter_routes). Returns the model."""
    cfg = model.config
    check_routing(cfg, scatter)
    w, K, n, H = cfg.width, cfg.num_latent_tokens, cfg.grid_size ** 2, cfg.heads
    d = w // H
    if scatter:
        reads, reader = scatter_routes(K, H, cfg.grid_size)
    eye = torch.eye(w)
    for vit, latents_query in ((model.encoder, True), (model.decoder, False)):
        vit.positional_embedding.mul_(3.0)  # positions that stand out from the patches' content
        if scatter:  # per head, the class token's and the patches' positions orthonormal (x the same scale)
            for h in range(H):
                vit.positional_embedding[:, h * d:(h + 1) * d] = torch.linalg.qr(torch.randn(d, n + 1))[0].T * 3 * (d / w) ** 0.5
        R = torch.linalg.qr(torch.randn(w, w))[0]
        pos = vit.positional_embedding[1:]
        if not scatter:
            vit.latent_token_positional_embedding.copy_(pos[torch.arange(K) * n // K] @ R.T)
        else:  # latent j, head h: R's columns of the head's dims times those dims of the patches it pairs with
            lpe = torch.zeros(K, w)
            for h in range(H):
                dims = slice(h * d, (h + 1) * d)
                for j in range(K):
                    paired = [reads[j][h]] if latents_query else [p for p in range(n) if reader[p][h] == j]
                    lpe[j] += R[:, dims] @ pos[paired, dims].sum(0)
            vit.latent_token_positional_embedding.copy_(lpe)
        # q . k = x^T Wq^T Wk y: (Wq, Wk) = (R^T, I) when rotated latents query patches, (I, R^T) when
        # mask tokens (at their positions) query rotated latents; both give gain^2 * position . position
        wq, wk = (R.T, eye) if latents_query else (eye, R.T)
        attn = vit.blocks[0].attn
        attn.qkv.weight.copy_(torch.cat([gain * wq, gain * wk, copy * eye]))
        attn.qkv.bias.zero_()
        attn.proj.weight.copy_(eye)
        attn.proj.bias.zero_()
    model.encoder.latent_tokens.mul_(0.1)  # just enough to tell apart the latents of one patch
    model.decoder.mask_token.zero_()  # mask tokens are their positions only
    return model


