import pytest
import torch
import torch.nn.functional as F

from quantizer import CodebookUpkeep, FiniteScalarQuantizer, VectorQuantizer

UPKEEP = ("usage_window", "dead_code_restart", "clustering_vq")


def make(**kw):
    """A quantizer with the trainers' upkeep attached."""
    torch.manual_seed(0)
    q = VectorQuantizer(codebook_size=64, token_size=8, **{k: v for k, v in kw.items() if k not in UPKEEP})
    q.upkeep = CodebookUpkeep(64, **{k: v for k, v in kw.items() if k in UPKEEP}, token_size=8)
    return q


def end_step(q, optimizer=None):
    return q.upkeep.end_step(q, optimizer)


def test_codes_are_nearest_unit_norm_entries():
    q = make()
    z = torch.randn(4, 5, 8)
    z_q, codes, _ = q(z)
    assert codes.shape == (4, 5) and codes.dtype == torch.long
    assert torch.allclose(z_q.norm(dim=-1), torch.ones(4, 5), atol=1e-5)
    # nearest by brute force = largest cosine similarity
    cos = F.normalize(z, dim=-1) @ F.normalize(q.codebook.weight, dim=-1).T
    assert torch.equal(codes, cos.argmax(-1))


def test_nearest_in_chunks_is_the_whole_distance_tensors_argmin():
    # 16,384 codes: on a CPU the distances are taken 16 tokens at a time; the codes must be those of the
    # (B, K, codes) tensor written at once: two tokens equal to codes, one equal to a code that is there
    # twice (the tie goes to the lower index, as argmin's over the whole tensor)
    torch.manual_seed(0)
    codebook = F.normalize(torch.randn(16384, 12), dim=-1)
    z = F.normalize(torch.randn(3, 37, 12), dim=-1)
    z[0, 0], z[1, 5] = codebook[7], codebook[16000]
    codebook[9] = codebook[8]
    z[2, 3] = codebook[8]
    d = (z.pow(2).sum(-1, keepdim=True) + codebook.pow(2).sum(-1)
         - 2 * torch.einsum("bkd,nd->bkn", z, codebook))
    codes = VectorQuantizer.nearest(z, codebook)
    assert codes.shape == (3, 37) and torch.equal(codes, d.argmin(-1))
    assert (codes[0, 0], codes[1, 5], codes[2, 3]) == (7, 16000, 8)


def test_decode_matches_quantized_vectors():
    q = make()
    z_q, codes, _ = q(torch.randn(3, 7, 8))
    assert torch.allclose(q.decode(codes), z_q, atol=1e-6)


def test_straight_through_gradient_is_identity():
    q = make().eval()
    z = F.normalize(torch.randn(2, 3, 8), dim=-1).requires_grad_()  # already unit-norm: normalize's jacobian is a projection
    g = torch.randn(2, 3, 8)
    g = g - (g * z.detach()).sum(-1, keepdim=True) * z.detach()  # tangent to the sphere, where the projection is identity
    z_q, _, _ = q(z)
    (z_q * g).sum().backward()
    assert torch.allclose(z.grad, g, atol=1e-5)


def test_losses_commitment_and_codebook():
    q = make()
    z = torch.randn(2, 6, 8, requires_grad=True)
    z_q, codes, losses = q(z)
    zn, e = F.normalize(z.detach(), dim=-1), q.decode(codes).detach()
    mse = (zn - e).pow(2).mean()
    assert torch.allclose(losses["codebook"], mse) and torch.allclose(losses["commitment"], 0.25 * mse)
    # the commitment loss moves only the encoder output, the codebook loss only the codebook
    losses["commitment"].backward(retain_graph=True)
    assert z.grad.abs().sum() > 0 and q.codebook.weight.grad is None
    z.grad = None
    losses["codebook"].backward()
    assert z.grad is None or z.grad.abs().sum() == 0
    assert q.codebook.weight.grad.abs().sum() > 0


def test_fp32_under_bf16_autocast():
    q = make()
    z = torch.randn(2, 4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z_q, codes, losses = q(z.bfloat16())
    assert z_q.dtype == torch.float32 and losses["codebook"].dtype == torch.float32
    assert torch.equal(codes, q(z.bfloat16().float())[1])


def test_usage_statistics_and_dead_code_restart():
    q = make(usage_window=3)
    z = F.normalize(torch.randn(1, 1, 8), dim=-1).repeat(4, 16, 1)  # every token the same: one code used
    q(z)
    stats = end_step(q)
    assert stats["perplexity"].item() == 1.0 and abs(stats["usage"].item() - 1 / 64) < 1e-6
    q2 = make(usage_window=3, dead_code_restart=True)
    before = q2.codebook.weight.detach().clone()
    for _ in range(3):
        q2(z)
        end_step(q2)
    changed = (q2.codebook.weight != before).any(1)
    assert changed.sum() == 63  # every code but the used one re-seeded near the encoder output
    assert torch.allclose(F.normalize(q2.codebook.weight[changed], dim=-1), z[0, 0].expand(63, 8), atol=0.1)
    q2(z)
    assert end_step(q2)["usage"].item() == 1.0  # re-seeded codes count as fresh for a window


def test_usage_window_counts_optimizer_steps_not_forward_passes():
    """Two micro-steps of half a batch each are one optimizer step: the same bookkeeping, the same restart
    (from the encoder outputs of both halves, in order) as one forward pass of the whole batch."""
    z = F.normalize(torch.randn(4, 16, 8), dim=-1)
    whole, halves = make(usage_window=2, dead_code_restart=True), make(usage_window=2, dead_code_restart=True)
    before = whole.codebook.weight.detach().clone()
    for step in range(3):
        torch.manual_seed(step)
        whole(z)
        a = end_step(whole)
        torch.manual_seed(step)
        halves(z[:2])
        halves(z[2:])
        b = end_step(halves)
        assert a["usage"] == b["usage"] and torch.allclose(a["perplexity"], b["perplexity"])
    assert whole.upkeep.step == halves.upkeep.step == 3
    assert torch.equal(whole.upkeep.last_used, halves.upkeep.last_used)
    assert (whole.codebook.weight != before).any() and torch.equal(whole.codebook.weight, halves.codebook.weight)


def test_without_l2_norm_codes_are_nearest_raw_entries():
    """The released VQ-8k models: nearest code by squared distance on raw vectors, losses on raw vectors."""
    q = make(use_l2_norm=False)
    q.codebook.weight.data.normal_()
    z = torch.randn(4, 5, 8, requires_grad=True)
    z_q, codes, losses = q(z)
    assert torch.equal(codes, torch.cdist(z.detach().flatten(0, 1), q.codebook.weight).argmin(-1).view(4, 5))
    assert torch.allclose(z_q, q.codebook.weight[codes]) and torch.allclose(q.decode(codes), z_q)
    assert torch.allclose(losses["codebook"], (z.detach() - q.codebook.weight[codes]).pow(2).mean())
    assert not torch.allclose(z_q.norm(dim=-1), torch.ones(4, 5))


def test_gaussian_bottleneck_samples_in_training_and_is_the_mean_in_eval():
    from quantizer import GaussianBottleneck
    b = GaussianBottleneck()
    z = torch.randn(3, 4, 2 * 6)
    mean, logvar = b.posterior(z)
    assert mean.shape == (3, 4, 6) and torch.equal(b.encode(z), mean) and torch.equal(b.decode(mean), mean)
    latent, codes, losses = b.eval()(z)
    assert torch.equal(latent, mean) and codes is None
    # KL to N(0, I): 0 for a standard normal posterior, summed over dims and tokens, averaged over images
    assert torch.allclose(b.kl(torch.zeros(2, 6), torch.zeros(2, 6)), torch.zeros(2))
    assert torch.allclose(losses["kl"], b.kl(mean, logvar).sum() / 3)
    torch.manual_seed(0)
    samples = torch.stack([b.train()(z)[0] for _ in range(2000)])
    assert torch.allclose(samples.mean(0), mean, atol=0.15 * logvar.exp().sqrt().max())
    assert torch.allclose(samples.std(0), (0.5 * logvar).exp(), rtol=0.1)


@pytest.mark.parametrize("use_l2_norm", [False, True])
def test_clustering_vq_is_the_official_codebook_update(use_l2_norm):
    """One training step of the official clustering_vq (1d-tokenizer quantizer.py), written out here: the usage
    EMA, then each code pulled towards its nearest encoder output by exp(-usage * K * 10 / (1 - 0.99) - 1e-3)."""
    q = make(use_l2_norm=use_l2_norm, clustering_vq=True).train()
    q.codebook.weight.data.normal_()
    before = q.codebook.weight.detach().clone()
    z = torch.randn(3, 5, 8)
    codes = q(z)[1]
    end_step(q)
    flat = z.reshape(-1, 8)
    zn = F.normalize(flat, dim=-1) if use_l2_norm else flat
    e = F.normalize(before, dim=-1) if use_l2_norm else before
    d = (zn ** 2).sum(1, keepdim=True) + (e ** 2).sum(1) - 2 * zn @ e.T
    prob = 0.01 * torch.bincount(codes.flatten(), minlength=64).float() / codes.numel()
    w = torch.exp(-(prob * 64 * 10) / 0.01 - 1e-3)[:, None]
    assert torch.allclose(q.upkeep.embed_prob, prob)
    assert torch.allclose(q.codebook.weight, before * (1 - w) + flat[d.argmin(0)] * w, atol=1e-6)
    assert (q.codebook.weight - before).abs().sum(1)[codes.unique()].max() < 1e-3  # used codes barely move
    assert "upkeep.embed_prob" not in make().state_dict()  # off: the state dict of every other checkpoint


def test_restarted_codes_get_fresh_optimizer_state():
    """Re-seeded after the optimizer's step, with their AdamW moments reset: a dead code's stale moments never
    move its new vector; the codes that lived keep theirs."""
    q = make(usage_window=1, dead_code_restart=True)
    q.codebook.weight.data.normal_()
    optimizer = torch.optim.AdamW(q.parameters(), lr=1e-2)

    def step(z):
        z_q, codes, losses = q(z.requires_grad_())
        losses["codebook"].backward()
        optimizer.step()
        optimizer.zero_grad()
        return codes, end_step(q, optimizer)

    first, _ = step(torch.randn(4, 8, 8))  # many codes used: they get moments
    moments = {k: v.clone() for k, v in optimizer.state[q.codebook.weight].items() if k != "step"}
    second, _ = step(F.normalize(torch.randn(1, 1, 8), dim=-1).repeat(2, 8, 1))  # one code used: the others die
    used_then = torch.zeros(64, dtype=torch.bool)
    used_then[first.unique()] = True
    dead = used_then.clone()
    dead[second.unique()] = False
    assert dead.sum() > 5 and all(v[dead].abs().sum(1).min() > 0 for v in moments.values())
    state = optimizer.state[q.codebook.weight]
    for k in moments:  # the dead codes' moments are reset, the living one's is not
        assert state[k][dead].abs().sum() == 0 and state[k][second.unique()].abs().sum() > 0, k
    restarted = q.codebook.weight.detach().clone()
    q.codebook.weight.grad = torch.zeros_like(restarted)
    optimizer.step()  # no gradient and no moments: a re-seeded vector moves by AdamW's decoupled weight decay alone
    assert torch.allclose(q.codebook.weight[dead], restarted[dead] * (1 - 1e-2 * 1e-2))


def test_fsq_codes_are_the_integers_of_a_grid_every_one_reached():
    """FSQ [8, 5, 5, 5]: 1,000 codes, each an integer <-> a point of the grid, L values per dim in [-1, 1]."""
    q = FiniteScalarQuantizer([8, 5, 5, 5])
    points = q.decode(torch.arange(1000))
    assert points.shape == (1000, 4) and points.unique(dim=0).shape[0] == 1000  # one point per integer
    assert [len(points[:, i].unique()) for i in range(4)] == [8, 5, 5, 5] and points.abs().max() == 1
    # encoder outputs that the squashing takes to just inside each point: each one's code is its integer
    half, offset = (q.levels - 1) * (1 - 1e-3) / 2, (q.levels % 2 == 0) * 0.5
    z = torch.atanh((0.99 * points * (q.levels // 2) + offset) / half) - torch.tan(offset / half)
    z_q, codes, losses = q(z[:, None])
    assert codes[:, 0].tolist() == list(range(1000)) and torch.allclose(z_q[:, 0], points, atol=1e-6)
    assert losses == {} and codes.dtype == torch.long
    z = 3 * torch.randn(5000, 1, 4, generator=torch.Generator().manual_seed(0))
    z_q, codes, _ = q(z)
    assert 0 <= codes.min() and codes.max() < 1000 and torch.allclose(q.decode(codes), z_q, atol=1e-6)


def test_fsq_rounding_is_straight_through():
    """The gradient is the squashing's, as if there were no rounding: every entry gets one."""
    q = FiniteScalarQuantizer([8, 5, 3])
    z = torch.randn(4, 6, 3, requires_grad=True)
    g = torch.randn(4, 6, 3)
    (q(z)[0] * g).sum().backward()
    w = z.detach().clone().requires_grad_()
    (q.grid(w) / (q.levels // 2) * g).sum().backward()
    assert torch.allclose(z.grad, w.grad) and (z.grad != 0).all()
    assert list(q.state_dict()) == [] and list(q.parameters()) == []  # nothing learned, nothing saved


def test_fsq_usage_is_counted_as_vq_codes_are():
    q = FiniteScalarQuantizer([4, 4])
    q.upkeep = CodebookUpkeep(16, usage_window=1)
    q.train()(torch.full((2, 3, 2), 5.0))  # every token the same code: the last of the grid
    stats = q.upkeep.end_step(q)
    assert stats["usage"] == 1 / 16 and stats["perplexity"] == 1 and q.upkeep.last_used[15] == 1
