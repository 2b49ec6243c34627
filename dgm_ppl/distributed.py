r"""Data-parallel training on :mod:`torch.distributed` (gloo on CPU, NCCL on GPU, launched by ``torchrun``).

Each of :math:`W` processes (*ranks*) runs the same Pyro program on its own shard of every global batch and holds
a full copy of the parameters. For a model that puts its data in ``pyro.plate("data", N, subsample=x)`` with the
*global* data size :math:`N`, rank :math:`r`'s loss on its :math:`B` points is
:math:`L_r = \frac{N}{B}\sum_{i \in \mathcal B_r} \ell_i`, so the average of the ranks' gradients is

.. math::

    \frac1W \sum_{r=1}^W \nabla L_r = \frac{N}{WB} \sum_{i \in \mathcal B_1 \cup \dots \cup \mathcal B_W} \nabla \ell_i,

the gradient of one process on the union batch of :math:`WB` points. :class:`DistributedSVI` all-reduces the
gradients of every parameter of the model and the guide after each backward pass and before the optimizer's
step (any :class:`pyro.optim.PyroOptim`, :mod:`dgm_ppl.optim` included), so every rank takes the same step and
the parameters stay bit-identical. A plate sized by the batch itself (``pyro.plate("data", len(x))``, no global
:math:`N`) sums each rank's terms unscaled, so the average is :math:`1/W` of the union batch's gradient: the same
direction, which Adam does not notice, but a :math:`W` times smaller step for SGD.

The parts of dgm_ppl that carry state of their own:

* **Persistent chains** (:class:`~dgm_ppl.energy.PersistentChains`, ...) stay on their rank: each rank advances its
  own :math:`C` chains, and since the SML gradient is linear in the negative phase, averaging the gradients
  averages the negative phases: the chains of all ranks act as :math:`WC` chains.
* **Running statistics** (centering offsets of an RBM or DBM, batch-norm statistics): the floating-point buffers
  of the ``modules`` given to :class:`DistributedSVI` are averaged after each step (in float64, so that buffers
  equal on every rank stay bit-identical).
* **Adversaries** (the discriminator of :class:`~dgm_ppl.infer.GANLoss`, a learned MMD feature map, ...) are
  broadcast from rank 0 when the :class:`DistributedSVI` is made, and their gradients are averaged before each of
  their own optimizer's steps (:func:`~dgm_ppl.infer.comparison.adversary_gradient_hook`).
* **Parameters** are broadcast from rank 0 when they are first registered (``pyro.param``, ``pyro.module``,
  :class:`~pyro.nn.PyroModule` attributes), so every rank starts from rank 0's initial values even when each rank
  was seeded differently (:func:`set_rng_seed` gives each rank its own random stream). A parameter registered out
  of the handlers' sight (inside ``poutine.block``, as an amortized guide's heads are at its first call) is
  broadcast after the step that made it, and that step is computed again from rank 0's values.

Faults. Before each reduction the ranks exchange a status flag: when one rank raises inside a step (NaN data on
its shard, a diverging loss), it reports the failure and re-raises, and every other rank raises
:class:`DistributedError` naming it, instead of waiting for it forever.

Checkpoints. :func:`save_checkpoint` gathers every rank's own state (chains, random number generators) into one
file written by rank 0, and :func:`load_checkpoint` restores it exactly on the same number of ranks (a clear
error on another number).

Shutdown. :func:`destroy_process_group` ends the group and then waits briefly with the interpreter's lock released.
A gloo worker thread frees the tensors of a finished collective after the collective returns, and a tensor that
Python has already let go of needs the interpreter's lock to be freed; if the interpreter is shutting down by
then, the thread is killed inside C++ and the process aborts (SIGABRT, "terminate called without an active
exception") after all its work is done. :func:`init_process_group` and :class:`DistributedSVI` register
:func:`destroy_process_group` to run at exit, so a script that does not call it ends cleanly too.

:func:`~dgm_ppl.infer.train` shards each global batch across the ranks of a :class:`DistributedSVI`. Without a
process group (a plain ``python script.py``) everything here runs as a single process.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta

import pyro
import pyro.poutine as poutine
import torch
import torch.distributed as dist
from pyro.infer import SVI
from pyro.infer.util import zero_grads
from pyro.poutine.messenger import Messenger
from torch import Tensor, nn

from .checkpoint import atomic_save, load_optim_state
from .infer.comparison import adversary_gradient_hook

__all__ = [
    "DistributedError",
    "DistributedSVI",
    "init_process_group",
    "destroy_process_group",
    "get_rank",
    "get_world_size",
    "set_rng_seed",
    "broadcast_module",
    "param_checksum",
    "save_checkpoint",
    "load_checkpoint",
]


class DistributedError(RuntimeError):
    """Another rank failed during a step; this rank stops too (its own state is as before the step)."""


def _active(group=None) -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def get_rank(group=None) -> int:
    """This process's rank, or 0 without a process group."""
    return dist.get_rank(group) if dist.is_available() and dist.is_initialized() else 0


def get_world_size(group=None) -> int:
    """The number of processes, or 1 without a process group."""
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


def init_process_group(backend: str | None = None, timeout: float = 600.0) -> tuple[int, int]:
    """Join the process group that ``torchrun`` describes in the environment (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``, ...), and return ``(rank, world_size)``. Without these variables (a plain ``python``
    launch), start nothing and return ``(0, 1)``.

    :param backend: ``"gloo"`` or ``"nccl"``; by default NCCL when CUDA is available, else gloo. With NCCL each
        process uses the GPU ``LOCAL_RANK``.
    :param timeout: seconds a collective waits for a missing rank before it raises.
    """
    if "WORLD_SIZE" not in os.environ:
        return 0, 1
    if not dist.is_initialized():
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
        _shutdown_at_exit()
    return dist.get_rank(), dist.get_world_size()


_SHUTDOWN_REGISTERED = False


def _shutdown_at_exit() -> None:
    global _SHUTDOWN_REGISTERED
    if not _SHUTDOWN_REGISTERED:
        atexit.register(destroy_process_group)
        _SHUTDOWN_REGISTERED = True


def destroy_process_group(settle: float = 0.1) -> None:
    """End the default process group, if there is one, and let its worker threads finish before the interpreter
    exits (see the module's notes on shutdown). Safe to call more than once.

    :param settle: seconds to wait, with the interpreter's lock released, after the group is destroyed.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    dist.destroy_process_group()
    time.sleep(settle)  # a gloo thread still freeing a collective's tensors takes the lock now, not at exit


def set_rng_seed(seed: int, group=None) -> None:
    """Seed torch, NumPy and Python with ``seed + rank``: each rank draws its own noise (latents, fakes, chain
    updates), while :class:`DistributedSVI` gives every rank rank 0's initial parameters."""
    pyro.set_rng_seed(seed + get_rank(group))


def _comm_device(group=None) -> torch.device:
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@torch.no_grad()
def broadcast_module(module: nn.Module, src: int = 0, group=None) -> None:
    """Copy rank ``src``'s parameters and buffers of ``module`` to every rank, in place (nothing without a
    process group)."""
    if not _active(group):
        return
    for t in list(module.parameters()) + list(module.buffers()):
        _broadcast(t, src, group)


def _broadcast(t: Tensor, src: int, group) -> None:
    device = _comm_device(group)
    buf = t.detach().to(device).contiguous()
    dist.broadcast(buf, src, group)
    if buf is not t:
        t.detach().copy_(buf)


def param_checksum(modules: Mapping[str, nn.Module] | None = None) -> str:
    """A SHA-256 digest of the parameters' bytes: of Pyro's param store (by name), or of the tensors in
    ``modules``' state (parameters and buffers). Equal digests mean bit-identical parameters."""
    h = hashlib.sha256()
    if modules is None:
        store = pyro.get_param_store()
        items = sorted((name, store.get_param(name).unconstrained()) for name in store.keys())
    else:
        items = [
            (f"{m}.{k}", v)
            for m, module in sorted(modules.items())
            for k, v in module.state_dict().items()
            if isinstance(v, Tensor)
        ]
    for name, value in items:
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _number(x) -> float:
    return float(x.detach()) if isinstance(x, Tensor) else float(x)


def _pending(module: nn.Module) -> list[Tensor] | None:
    """The deferred centering update of an energy model, as a list of tensors (None when there is none)."""
    value = getattr(module, "pending_hidden_means", None)
    if value is None:
        return None
    return [value] if isinstance(value, Tensor) else list(value)


class _BroadcastNewParams(Messenger):
    """Replaces the initial value of each parameter that is not yet in the param store by rank 0's."""

    def __init__(self, group, known: set[str]):
        super().__init__()
        self.group, self.known = group, known

    def _pyro_param(self, msg) -> None:
        args = msg["args"]
        if len(args) < 2 or args[0] in pyro.get_param_store():
            return
        init = args[1]() if callable(args[1]) else args[1]
        if isinstance(init, Tensor):
            with torch.no_grad():
                _broadcast(init, 0, self.group)
        msg["args"] = (args[0], init, *args[2:])
        self.known.add(args[0])


class DistributedSVI(SVI):
    """:class:`pyro.infer.SVI` whose steps average the gradients over the ranks of a process group (see the
    module's notes). With one process it is :class:`pyro.infer.SVI`.

    :param model: the model (its data plate sized with the global number of data).
    :param guide: the guide.
    :param optim: a :class:`pyro.optim.PyroOptim` (or a :mod:`dgm_ppl.optim` optimizer).
    :param loss: the loss (an ELBO, or one of dgm_ppl's losses; an adversary inside it is synchronized too).
    :param modules: modules whose parameters and buffers are broadcast from rank 0 now and whose floating-point
        buffers (centering offsets, running statistics) are averaged after each step; persistent chains are per
        rank and do not belong here.
    :param group: the process group (default: the whole world).
    """

    def __init__(
        self,
        model: Callable,
        guide: Callable,
        optim,
        loss,
        *,
        modules: Iterable[nn.Module] = (),
        group=None,
        **loss_and_grads_kwargs,
    ):
        self.group = group
        self.rank, self.world_size = get_rank(group), get_world_size(group)
        self.modules = list(modules)
        adversary = getattr(loss, "adversary", None)
        self._synced = self.modules + ([adversary] if isinstance(adversary, nn.Module) else [])
        self._known: set[str] = set()  # names of the parameters known to be equal on every rank
        if self.world_size > 1:
            _shutdown_at_exit()  # also for a group made by torch.distributed.init_process_group
            wrap = _BroadcastNewParams(group, self._known)
            model, guide = wrap(model), wrap(guide)
            for module in self._synced:
                broadcast_module(module, 0, group)
        super().__init__(model, guide, optim, loss, **loss_and_grads_kwargs)

    # -- collectives -------------------------------------------------------------------------------------------
    def _check(self, error: BaseException | None, count: int = 0) -> None:
        """Exchange the ranks' status; raise on every rank if one failed or the ranks disagree on ``count``."""
        status = torch.tensor([float(error is not None), count, -count], device=_comm_device(self.group))
        dist.all_reduce(status, dist.ReduceOp.MAX, group=self.group)
        failed, high, low = status.tolist()
        if failed:
            report = None if error is None else f"{type(error).__name__}: {error}"
            reports: list = [None] * self.world_size
            dist.all_gather_object(reports, report, group=self.group)
            if error is not None:
                raise error
            named = "; ".join(f"rank {r}: {m}" for r, m in enumerate(reports) if m is not None)
            raise DistributedError(f"another rank failed during this step ({named}); every rank stops")
        if high != -low:
            raise DistributedError(
                f"the ranks registered different numbers of parameters ({int(-low)} to {int(high)}): every rank "
                "must run the same model and guide"
            )

    def _average(self, tensors: list[Tensor]) -> None:
        """Average ``tensors`` over the ranks, in place (one all-reduce per dtype and device)."""
        groups: dict[tuple, list[Tensor]] = {}
        for t in tensors:
            groups.setdefault((t.dtype, t.device), []).append(t)
        device = _comm_device(self.group)
        for items in groups.values():
            flat = torch.cat([t.reshape(-1) for t in items]).to(device)
            dist.all_reduce(flat, group=self.group)
            flat /= self.world_size
            offset = 0
            for t in items:
                t.copy_(flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()

    def _average_grads(self, params: list[Tensor], extra: list[float]) -> list[float]:
        """Average the gradients of ``params`` (missing ones count as 0; a gradient missing on every rank
        stays missing) together with the numbers ``extra``, which are returned averaged."""
        if not params:
            values = torch.tensor(extra, dtype=torch.float64)
            self._average([values])
            return values.tolist()
        like = params[0]
        dtype = torch.promote_types(like.dtype, torch.float32)
        tail = torch.tensor([*extra] + [float(p.grad is not None) for p in params], dtype=dtype)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        tail = tail.to(like.device)
        self._average(grads + [tail])
        tail = tail.tolist()
        for p, g, present in zip(params, grads, tail[len(extra) :]):
            p.grad = g if present > 0 else None
        return tail[: len(extra)]

    @torch.no_grad()
    def _average_buffers(self) -> None:
        """Average the floating-point buffers of the synchronized modules, and the deferred centering updates
        (``pending_hidden_means``, see :mod:`dgm_ppl.energy.protocol`) of the energy models among them."""
        buffers = [b for m in self._synced for b in m.buffers() if b.is_floating_point()]
        pending = [(m, _pending(m)) for root in self._synced for m in root.modules() if _pending(m) is not None]
        exact = [t.to(torch.float64) for t in buffers + [t for _, ts in pending for t in ts]]
        if not exact:
            return
        self._average(exact)
        averaged = iter(exact)
        for b in buffers:
            b.copy_(next(averaged))
        for m, ts in pending:  # new tensors: the caller may still hold the old ones
            means = [next(averaged).to(t, copy=True) for t in ts]
            value = m.pending_hidden_means
            m.pending_hidden_means = means[0] if isinstance(value, Tensor) else type(value)(means)

    def _adversary_hook(self, module: nn.Module) -> None:
        self._check(None, sum(1 for _ in module.parameters()))
        params = [p for p in module.parameters() if p.requires_grad]
        self._average_grads(params, [])

    # -- SVI -------------------------------------------------------------------------------------------------
    def step(self, *args, **kwargs):
        """One step on this rank's shard ``args``: the loss and its gradients here, the gradients averaged over
        the ranks, then the optimizer's step. Returns the ranks' mean loss (the same on every rank).

        :raises DistributedError: when another rank failed during this step (that rank raises its own error).
        """
        if self.world_size == 1:
            return super().step(*args, **kwargs)
        loss, params = self._loss_and_grads(args, kwargs)
        fresh = [params[name] for name in sorted(params) if name not in self._known]  # the same order on every rank
        if fresh:
            # Parameters made during this step out of the handlers' sight (inside a poutine.block, e.g. by a
            # guide's setup at its first call) hold each rank's own initial values: start every rank from rank
            # 0's, and compute the step again from there (once per such parameter).
            with torch.no_grad():
                for p in fresh:
                    _broadcast(p, 0, self.group)
            self._known.update(params)
            zero_grads(set(params.values()))
            loss, params = self._loss_and_grads(args, kwargs)
        self._known.update(params)
        params = [params[name] for name in sorted(params)]
        losses = [_number(part) for part in loss] if isinstance(loss, tuple) else [_number(loss)]
        losses = self._average_grads(params, losses)
        self._average_buffers()
        self.optim(set(params))
        zero_grads(set(params))
        return type(loss)(losses) if isinstance(loss, tuple) else losses[0]

    def _loss_and_grads(self, args: tuple, kwargs: dict) -> tuple:
        """The loss and its gradients on this rank, and the parameters by name; raises on every rank when one
        failed (with this rank's gradients cleared)."""
        error, loss = None, 0.0
        try:
            with poutine.trace(param_only=True) as capture, adversary_gradient_hook(self._adversary_hook):
                loss = self.loss_and_grads(self.model, self.guide, *args, **kwargs)
        except Exception as e:  # reported to the other ranks first, then re-raised here
            error = e
        params = {name: site["value"].unconstrained() for name, site in capture.trace.nodes.items()}
        try:
            self._check(error, len(params))
        except BaseException:
            zero_grads(set(params.values()))  # nothing of the failed step is left behind
            raise
        return loss, params

    def evaluate_loss(self, *args, **kwargs):
        """The loss on this rank's shard, averaged over the ranks, with nothing updated."""
        if self.world_size == 1:
            return super().evaluate_loss(*args, **kwargs)
        error, loss = None, 0.0
        try:
            loss = super().evaluate_loss(*args, **kwargs)
        except Exception as e:
            error = e
        self._check(error)
        losses = list(loss) if isinstance(loss, tuple) else [loss]
        values = torch.tensor(losses, dtype=torch.float64, device=_comm_device(self.group))
        self._average([values])
        return type(loss)(values.tolist()) if isinstance(loss, tuple) else values.item()

    def check_same(self, value: float, what: str) -> None:
        """Raise ``ValueError`` on every rank unless ``value`` is the same on every rank (e.g. the data's size)."""
        if self.world_size == 1:
            return
        both = torch.tensor([value, -value], dtype=torch.float64, device=_comm_device(self.group))
        dist.all_reduce(both, dist.ReduceOp.MAX, group=self.group)
        high, low = both[0].item(), -both[1].item()
        if high != low:
            raise ValueError(f"{what} differs between the ranks ({low:g} to {high:g}): every rank must pass the same")

    def broadcast(self, tensor: Tensor, src: int = 0) -> Tensor:
        """``tensor`` as rank ``src`` has it (e.g. the order of an epoch's data), on every rank."""
        if self.world_size > 1:
            _broadcast(tensor, src, self.group)
        return tensor


# -- checkpoints -----------------------------------------------------------------------------------------------
def _to_cpu(state):
    if isinstance(state, Tensor):
        return state.detach().cpu()
    if isinstance(state, dict):
        return type(state)((k, _to_cpu(v)) for k, v in state.items())
    if isinstance(state, (list, tuple)):
        return type(state)(_to_cpu(v) for v in state)
    return state


def save_checkpoint(
    path: str | os.PathLike,
    modules: Mapping[str, nn.Module],
    optim=None,
    *,
    local: Mapping[str, nn.Module] | None = None,
    group=None,
    **extra,
) -> None:
    """Save a data-parallel run so that :func:`load_checkpoint` resumes it exactly, on every rank (collective).

    Rank 0 writes one file (atomically) with the shared state, as it holds it, and every rank's own state.

    :param path: where rank 0 writes.
    :param modules: the state every rank shares (models, guides, a loss with an adversary), by name.
    :param optim: the Pyro optimizer (its state is the same on every rank).
    :param local: each rank's own modules, by name: its persistent chains.
    :param extra: further picklable items (epoch counters, histories), returned by :func:`load_checkpoint`.
    """
    world = get_world_size(group)
    mine = {
        "local": {name: _to_cpu(m.state_dict()) for name, m in (local or {}).items()},
        "rng": pyro.util.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
    }
    ranks = [mine]
    if _active(group):
        ranks = [None] * world
        dist.all_gather_object(ranks, mine, group=group)
    if get_rank(group) == 0:
        state = {
            "world_size": world,
            "modules": {name: _to_cpu(m.state_dict()) for name, m in modules.items()},
            "optim": None if optim is None else _to_cpu(optim.get_state()),
            "ranks": ranks,
            "rng": None,
            "extra": extra,
        }
        atomic_save(state, path)
    if _active(group):
        dist.barrier(group=group)


def load_checkpoint(
    path: str | os.PathLike,
    modules: Mapping[str, nn.Module],
    optim=None,
    *,
    local: Mapping[str, nn.Module] | None = None,
    group=None,
) -> dict:
    """Restore a checkpoint of :func:`save_checkpoint` on the same number of ranks (each rank reads the file):
    the shared modules and the optimizer, this rank's own modules and random number generators. Returns the
    ``extra`` items.

    :raises FileNotFoundError: if ``path`` does not exist.
    :raises ValueError: if the file was written by another number of ranks, is damaged, or is not such a
        checkpoint; nothing is loaded.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ValueError(f"checkpoint {path!r} is damaged or not a torch file ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or "ranks" not in state or "world_size" not in state:
        raise ValueError(
            f"{path!r} is not a checkpoint of dgm_ppl.distributed.save_checkpoint (a single-process checkpoint "
            "is read by dgm_ppl.load_checkpoint); nothing was loaded"
        )
    world, rank = get_world_size(group), get_rank(group)
    if state["world_size"] != world:
        raise ValueError(
            f"{path!r} was written by {state['world_size']} processes and this run has {world}: its persistent "
            f"chains and random streams belong to {state['world_size']} ranks, so resume it on "
            f"{state['world_size']} processes; nothing was loaded"
        )
    mine = state["ranks"][rank]
    missing = (set(modules) - set(state["modules"])) | (set(local or {}) - set(mine["local"]))
    if missing:
        raise KeyError(f"the checkpoint has no modules named {sorted(missing)}")
    for name, module in modules.items():
        module.load_state_dict(state["modules"][name])
    for name, module in (local or {}).items():
        module.load_state_dict(mine["local"][name])
    if optim is not None and state["optim"] is not None:
        load_optim_state(optim, state["optim"])
    pyro.util.set_rng_state(mine["rng"])
    if mine["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(mine["cuda_rng"])
    return state["extra"]
