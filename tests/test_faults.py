"""Bad input, divergence, checkpoints, devices and data loading."""

import pyro
import pytest
import torch
from conftest import random_rbm
from pyro.infer import SVI, Trace_ELBO

from dgm_ppl import load_checkpoint, save_checkpoint
from dgm_ppl.datasets import load_binarized_mnist, load_digits
from dgm_ppl.energy import BernoulliRBM, GaussianBernoulliRBM, PersistentChains, exact_log_partition
from dgm_ppl.infer import DivergenceError, train


def _setup(cls=BernoulliRBM, n=100, **kwargs):
    rbm = cls(64, 16, **kwargs)
    chains = PersistentChains(rbm, 20)

    def model(batch):
        with pyro.plate("data", n, subsample=batch):
            pyro.sample("x", rbm.distribution(chains), obs=batch)

    return rbm, chains, model


def _snapshot(rbm, chains):
    return [t.detach().clone() for t in (rbm.weight, rbm.visible_bias, rbm.hidden_bias, chains.state, chains.hidden)]


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.full((10, 64), 0.5), "Bernoulli visible units need values in \\{0, 1\\}"),
        (torch.zeros(10, 63), "n_visible=64"),
        (torch.full((10, 64), float("nan")), "NaN or inf"),
        (torch.full((10, 64), float("inf")), "NaN or inf"),
    ],
)
def test_bad_data_raises_value_error_naming_the_site_and_loses_nothing(bad, match):
    rbm, chains, model = _setup()
    svi = SVI(model, lambda b: None, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    svi.step(load_digits()[:10])
    before = _snapshot(rbm, chains)
    with pytest.raises(ValueError, match=match) as info:
        svi.step(bad)
    assert "site 'x'" in str(info.value)
    for a, b in zip(before, _snapshot(rbm, chains)):
        assert torch.equal(a, b)


def test_gaussian_units_accept_reals_but_not_nan():
    rbm, chains, model = _setup(GaussianBernoulliRBM)
    svi = SVI(model, lambda b: None, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    svi.step(torch.randn(10, 64))
    bad = torch.randn(10, 64)
    bad[3, 7] = float("nan")
    with pytest.raises(ValueError, match="site 'x'.*\n*.*NaN"):
        svi.step(bad)


def test_batch_shape_mismatch_is_reported():
    rbm, chains, _ = _setup()
    d = rbm.distribution(chains).expand([10])
    with pytest.raises(ValueError, match="does not match batch shape"):
        d.log_prob(torch.zeros(7, 64))


def test_diverging_parameters_raise():
    rbm, chains, model = _setup()
    svi = SVI(model, lambda b: None, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    with torch.no_grad():
        rbm.weight[0, 0] = float("nan")
    with pytest.raises(DivergenceError, match="diverged"):
        svi.step(load_digits()[:10])


def test_train_raises_on_a_diverging_run():
    rbm, chains, model = _setup(GaussianBernoulliRBM, n=1500, learn_std=True)
    x = load_digits(binarize=False) * 1e3
    svi = SVI(model, lambda b: None, pyro.optim.SGD({"lr": 10.0}), Trace_ELBO())
    with pytest.raises(DivergenceError):
        train(svi, x, epochs=5, batch_size=100, progress=False)


@pytest.mark.parametrize("centered", [False, True])
def test_checkpoint_resumes_exactly(tmp_path, centered):
    x = load_digits()
    rbm, chains, model = _setup(n=len(x), centered=centered)
    rbm.init_from_data(x)
    exact_log_partition(rbm)
    optim = pyro.optim.Adam({"lr": 1e-2})
    svi = SVI(model, lambda b: None, optim, Trace_ELBO())
    for i in range(5):
        svi.step(x[i * 50 : (i + 1) * 50])
    save_checkpoint(tmp_path / "ckpt.pt", {"rbm": rbm, "chains": chains}, optim, epoch=3)

    def run(svi):
        return [svi.step(x[i * 50 : (i + 1) * 50]) for i in range(5, 10)]

    losses_a = run(svi)
    final_a = _snapshot(rbm, chains)

    # a fresh process would rebuild everything: new objects, fresh param store, a fresh optimizer
    pyro.clear_param_store()
    torch.manual_seed(123)
    rbm2 = BernoulliRBM(64, 16, centered=centered, name=rbm._pyro_name)
    chains2 = PersistentChains(rbm2, 20)

    def model2(batch):
        with pyro.plate("data", len(x), subsample=batch):
            pyro.sample("x", rbm2.distribution(chains2), obs=batch)

    optim2 = pyro.optim.Adam({"lr": 1e-2})
    extra = load_checkpoint(tmp_path / "ckpt.pt", {"rbm": rbm2, "chains": chains2}, optim2)
    assert extra == {"epoch": 3} and rbm2.log_z == rbm.log_z
    losses_b = run(SVI(model2, lambda b: None, optim2, Trace_ELBO()))
    assert losses_a == losses_b
    for a, b in zip(final_a, _snapshot(rbm2, chains2)):
        assert torch.equal(a, b)


def test_float64_and_device_moves():
    rbm, chains, model = _setup()
    rbm.double()
    svi = SVI(model, lambda b: None, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    svi.step(load_digits(dtype=torch.float64)[:10])
    assert chains.state.dtype == torch.float64 and rbm.weight.dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda():
    from dgm_ppl.energy import ais_log_partition

    rbm = random_rbm(BernoulliRBM, 10, 8).cuda()
    chains = PersistentChains(rbm, 50)
    x = torch.bernoulli(torch.full((40, 10), 0.5, device="cuda"))

    def model(batch):
        with pyro.plate("data", 40, subsample=batch):
            pyro.sample("x", rbm.distribution(chains), obs=batch)

    svi = SVI(model, lambda b: None, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    train(svi, x, epochs=2, batch_size=20, progress=False)
    assert chains.state.is_cuda
    exact = float(exact_log_partition(rbm).detach())
    assert abs(ais_log_partition(rbm, 100, 2000).log_z - exact) < 0.1


def test_datasets():
    x, y = load_digits("train", return_labels=True)
    xt = load_digits("test")
    assert x.shape == (1500, 64) and xt.shape == (297, 64) and y.shape == (1500,)
    assert ((x == 0) | (x == 1)).all()
    assert load_digits("all", binarize=False).max() == 1.0
    with pytest.raises(ValueError, match="split"):
        load_digits("validation")
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_binarized_mnist("/nonexistent/binarized_mnist.npz")


def test_binarized_mnist_loader(tmp_path):
    import numpy as np

    path = tmp_path / "mnist.npz"
    np.savez(path, train=np.ones((3, 784), np.uint8), valid=np.zeros((2, 784), np.uint8))
    assert load_binarized_mnist(path, "valid").shape == (2, 784)
    with pytest.raises(KeyError, match="no split 'test'"):
        load_binarized_mnist(path, "test")


_WRITER = """
import sys, torch
from dgm_ppl import save_checkpoint
torch.set_num_threads(1)
big = torch.nn.Linear(2000, 2000)  # a 16 MB state: the write takes long enough to be interrupted
print("ready", flush=True)
while True:
    save_checkpoint(sys.argv[1], {"big": big})
"""


def test_checkpoint_survives_a_writer_killed_mid_save(tmp_path):
    """SIGKILL while save_checkpoint rewrites the file: the previous checkpoint stays loadable (atomic replace)."""
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "ck.pt"
    good = torch.nn.Linear(2000, 2000)
    save_checkpoint(path, {"big": good})
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        for delay in (0.05, 0.13, 0.21):  # kill at a few points inside the rewrite loop
            time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    loaded = torch.nn.Linear(2000, 2000)
    load_checkpoint(path, {"big": loaded}, restore_rng=False)  # a complete checkpoint: the old one or a new one
    assert loaded.weight.shape == (2000, 2000)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "ck.pt"]
    assert all(name.endswith(".tmp") for name in leftovers)  # at most the killed writer's temporary file


def test_load_checkpoint_on_a_damaged_file_names_it(tmp_path):
    rbm = BernoulliRBM(8, 4)
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"rbm": rbm})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated, as a non-atomic write killed midway leaves it
    with pytest.raises(ValueError, match="ck.pt.*damaged"):
        load_checkpoint(path, {"rbm": rbm})
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="damaged"):
        load_checkpoint(path, {"rbm": rbm})
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt", {"rbm": rbm})
