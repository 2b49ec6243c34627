import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

from dgm_ppl.datasets import load_digits
from dgm_ppl.models.vqvae import VQVAE

torch.set_num_threads(1)


def small_vqvae(**kwargs) -> VQVAE:
    vq = VQVAE.with_mlps(64, num_codes=8, code_dim=3, num_latents=2, hidden_dims=(16,), **kwargs)
    with torch.no_grad():  # codes of O(1), so that the nearest code is not always the same
        vq.codebook.normal_()
        if isinstance(vq.prior_logits, torch.nn.Parameter):
            vq.prior_logits.normal_()
    return vq


def test_quantizer_picks_the_nearest_code():
    vq = small_vqvae()
    z_e = torch.randn(20, 2, 3)
    index, e = vq.quantize(z_e)
    assert index.shape == (20, 2) and e.shape == (20, 2, 3)
    for b in range(20):
        for pos in range(2):
            distances = [(z_e[b, pos] - vq.codebook[j]).pow(2).sum().item() for j in range(8)]
            assert index[b, pos].item() == int(np.argmin(distances))
            assert torch.equal(e[b, pos], vq.codebook[index[b, pos]])


def test_straight_through_gradient():
    """The decoder's gradient wrt z_e is its gradient wrt z_q; the codebook gets none from the likelihood."""
    vq = small_vqvae()
    x = load_digits()[:10]
    guide_trace = poutine.trace(vq.guide).get_trace(x)
    z_e = vq._straight_through[1]
    model_trace = poutine.trace(poutine.replay(vq.model, trace=guide_trace)).get_trace(x)
    site = model_trace.nodes["x"]
    log_lik = site["fn"].log_prob(x).sum()
    grad_e, grad_codebook = torch.autograd.grad(log_lik, [z_e, vq.codebook], allow_unused=True)
    index = guide_trace.nodes["z"]["value"]
    z_q = vq.codebook[index].detach().requires_grad_()
    reference = dist.Bernoulli(logits=vq._decoder_logits(z_q)).to_event(1).log_prob(x).sum()
    (grad_q,) = torch.autograd.grad(reference, [z_q])
    assert grad_e.abs().max() > 0
    assert torch.allclose(grad_e, grad_q, atol=1e-6)
    assert grad_codebook is None or not grad_codebook.any()
    assert torch.allclose(site["fn"].base_dist.logits, vq._decoder_logits(z_q))  # the value is e_k


def by_hand_loss(vq: VQVAE, x: torch.Tensor) -> torch.Tensor:
    z_e = vq.encoder(x).reshape(len(x), 2, 3)
    d2 = (z_e[:, :, None, :] - vq.codebook).pow(2).sum(-1)  # (B, L, K) by broadcasting, not the module's formula
    index = d2.argmin(-1)
    e = vq.codebook[index]
    log_px = torch.distributions.Bernoulli(logits=vq.decoder(e.reshape(len(x), 6))).log_prob(x).sum()
    log_pz = torch.log_softmax(vq.prior_logits, -1).gather(-1, index.T).sum()
    codebook = (z_e - e).pow(2).sum()
    return -(log_px + log_pz) + codebook + vq.beta * codebook


def test_svi_loss_is_the_vq_vae_objective_and_trains_every_part():
    vq = small_vqvae(beta=0.3)
    x = load_digits()[:32]
    loss = Trace_ELBO().differentiable_loss(vq.model, vq.guide, x)
    assert loss.item() == pytest.approx(by_hand_loss(vq, x).item(), rel=1e-5)
    loss.backward()
    for name, p in vq.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # subsampling: every term is in the plate, so the loss scales by N / B
    with torch.no_grad():
        full = Trace_ELBO().loss(vq.model, vq.guide, x)
        scaled = Trace_ELBO().loss(vq.model, vq.guide, x, 1000)
    assert scaled == pytest.approx(full * 1000 / 32, rel=1e-5)


def test_trains_on_digits():
    x = load_digits()
    vq = VQVAE.with_mlps(64, num_codes=16, code_dim=4, num_latents=4, hidden_dims=(64,))
    svi = SVI(vq.model, vq.guide, Adam({"lr": 3e-3}), Trace_ELBO())

    def error() -> float:
        return (vq.reconstruct(x) - x).pow(2).sum(-1).mean().item()

    before = error()
    generator = torch.Generator().manual_seed(1)
    for _ in range(300):
        svi.step(x[torch.randint(len(x), (100,), generator=generator)], num_data=len(x))
    after = error()
    used = vq.encode(x).unique().numel()
    assert after < 0.5 * before, (before, after)  # measured: 15.9 -> about 5
    assert used > 1
    assert vq.sample(7).shape == (7, 64) and vq.sample(3, mean=False).unique().tolist() in ([0.0, 1.0], [0.0], [1.0])
    assert torch.isfinite(torch.tensor(svi.evaluate_loss(x, len(x))))


def test_ema_codebook():
    vq = small_vqvae(ema_decay=0.5)
    x = load_digits()[:40]
    assert "codebook" not in dict(vq.named_parameters())
    before, count, ema_sum = vq.codebook.clone(), vq.ema_count.clone(), vq.ema_sum.clone()
    z_e = vq.encode_continuous(x).detach().reshape(-1, 3)
    index = vq.encode(x).reshape(-1)
    with torch.no_grad():
        Trace_ELBO().loss(vq.model, vq.guide, x)
    assert torch.equal(vq.codebook, before)  # no update while evaluating without gradients
    Trace_ELBO().differentiable_loss(vq.model, vq.guide, x)
    n = torch.bincount(index, minlength=8).float()
    sums = torch.zeros(8, 3).index_add_(0, index, z_e)
    new_count = 0.5 * count + 0.5 * n
    new_sum = 0.5 * ema_sum + 0.5 * sums
    total = new_count.sum()
    smoothed = (new_count + 1e-5) / (total + 8e-5) * total
    assert torch.allclose(vq.codebook, new_sum / smoothed[:, None], atol=1e-5)
    svi = SVI(vq.model, vq.guide, Adam({"lr": 3e-3}), Trace_ELBO())
    losses = [svi.step(x) for _ in range(30)]
    assert losses[-1] < losses[0]
    assert "vqvae.codebook" not in pyro.get_param_store().keys()


def test_bad_input_and_numpy():
    vq = small_vqvae()
    x = load_digits()[:5]
    bad = x.clone()
    bad[0, 0] = float("nan")
    for value in (bad, x[:, :10], x[0], x * 0.5):
        for program in (vq.model, vq.guide, vq.encode):
            with pytest.raises(ValueError):
                program(value)
    with pytest.raises(TypeError):
        vq.encode("not data")
    assert torch.equal(vq.encode(x.numpy()), vq.encode(x))
    for index in (
        torch.tensor([[0, 8]]),
        torch.tensor([[0, -1]]),
        torch.zeros(1, 3, dtype=torch.long),
        torch.ones(1, 2),
    ):
        with pytest.raises(ValueError):
            vq.decode(index)
    assert vq.decode(np.array([[0, 7]])).shape == (1, 64)
    with pytest.raises(ValueError):
        VQVAE.with_mlps(64, num_codes=0, code_dim=2)
    with pytest.raises(ValueError):
        VQVAE.with_mlps(64, num_codes=4, code_dim=2, ema_decay=1.0)


def test_three_dimensional_encoder_output_and_no_x_dim():
    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(64, 2, 3) * 0.1)

        def forward(self, x):
            return torch.einsum("bi,ilk->blk", x, self.w)

    vq = VQVAE(Encoder(), torch.nn.Linear(6, 64), num_codes=5, code_dim=3, num_latents=2)
    assert vq.x_dim is None and vq.encode(load_digits()[:4]).shape == (4, 2)
    with pytest.raises(ValueError, match="encoder failed"):
        vq.encode(torch.zeros(3, 10))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda():
    vq = small_vqvae().cuda()
    x = load_digits()[:16]
    svi = SVI(vq.model, vq.guide, Adam({"lr": 1e-3}), Trace_ELBO())
    assert np.isfinite(svi.step(x.cuda()))
    assert vq.encode(x.numpy()).device.type == "cuda" and vq.sample(2).device.type == "cuda"
