r"""One torch optimizer over all of SVI's parameters, with :mod:`pyro.optim`'s interface.

:class:`pyro.optim.PyroOptim` keeps one torch optimizer per parameter tensor, so that a step runs one small update
per tensor (on CUDA, several kernel launches per tensor) plus the Python around each. :class:`MultiTensorOptim` keeps
a single torch optimizer whose parameter groups hold every parameter SVI has seen, so that one ``step`` updates them
all, with torch's multi-tensor (``foreach=True``) or ``fused=True`` kernels when asked. It is a
:class:`~pyro.optim.PyroOptim`, a drop-in wherever Pyro's optimizers go::

    from dgm_ppl.optim import Adam, ExponentialLR
    svi = SVI(model, guide, Adam({"lr": 1e-3}), Trace_ELBO())                  # as pyro.optim.Adam
    svi = SVI(model, guide, Adam({"lr": 1e-3, "fused": True}), Trace_ELBO())   # torch's fused kernel
    scheduler = ExponentialLR({"optimizer": torch.optim.Adam, "optim_args": {"lr": 1e-2}, "gamma": 0.99})

The arithmetic is torch's, per parameter as in :mod:`pyro.optim`: with torch's default implementation (on CPU the
per-tensor loop, on CUDA ``foreach``) the trajectory is bit-for-bit that of the same ``pyro.optim`` optimizer, and the
``foreach``/``fused`` kernels agree with it to rounding. What differs:

- the gradients of the step's parameters are set to ``None`` after the update instead of being zeroed (so ``p.grad``
  after ``svi.step`` is ``None``), with Pyro's semantics kept: only the parameters of the current step are updated,
  and one that has had a gradient is updated with a zero gradient when it has none;
- per-parameter ``optim_args`` (a callable of the parameter's name) put parameters with equal arguments in one
  parameter group; clipping (``clip_args``) is per tensor, as in Pyro;
- :meth:`MultiTensorOptim.get_state` and :meth:`~MultiTensorOptim.set_state` use :mod:`pyro.optim`'s format (one
  one-parameter torch state per parameter name), so checkpoints move between the two both ways, and
  :func:`dgm_ppl.save_checkpoint` / :func:`dgm_ppl.load_checkpoint` resume bit-for-bit.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable

import pyro
import torch
from pyro.optim import PyroOptim
from pyro.optim.optim import normalize_param_name
from torch import Tensor

__all__ = [
    "MultiTensorOptim",
    "MultiTensorLRScheduler",
    "Adam",
    "AdamW",
    "SGD",
    "RMSprop",
    "Adagrad",
    "ExponentialLR",
    "StepLR",
    "MultiStepLR",
    "CosineAnnealingLR",
    "LambdaLR",
    "ReduceLROnPlateau",
]

_IMPLEMENTATION = frozenset({"foreach", "fused", "capturable", "differentiable"})  # how, not what: kept on loading
_EMPTY = inspect.Parameter.empty


def _defaults(optimizer: type[torch.optim.Optimizer]) -> dict:
    """The constructor's keyword options and their defaults (``_EMPTY`` when required)."""
    params = inspect.signature(optimizer.__init__).parameters
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {k: p.default for k, p in params.items() if k not in ("self", "params") and p.kind in kinds}


def _check_args(optimizer: type[torch.optim.Optimizer], args, where: str) -> dict:
    if not isinstance(args, dict):
        raise ValueError(f"{where}: optim_args must be a dict (or return one), got {type(args).__name__}")
    known = _defaults(optimizer)
    unknown = sorted(set(args) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown option(s) {unknown} for {optimizer.__name__}; known: {sorted(known)}")
    lr = args.get("lr")
    if lr is not None:
        try:
            value = float(lr)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: lr must be a number, got {lr!r}") from None
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{where}: lr must be finite and non-negative, got {lr!r}")
    return args


def _same(a, b) -> bool:
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape == b.shape and bool((a == b).all())
    return a == b


def _matches(group: dict, options: dict) -> bool:
    """Whether a parameter with ``options`` belongs in ``group`` (whose lr a scheduler may have moved from its
    ``initial_lr``)."""
    for key, value in options.items():
        current = group.get("initial_lr", group.get("lr")) if key == "lr" else group.get(key, _EMPTY)
        if not _same(current, value):
            return False
    return True


class _Slot:
    """What ``optim_objs[p]`` is for a :class:`MultiTensorOptim`: a one-parameter view with the ``state_dict`` /
    ``load_state_dict`` of a one-parameter torch optimizer (the format :mod:`pyro.optim` and
    :func:`dgm_ppl.load_checkpoint` use)."""

    def __init__(self, owner: MultiTensorOptim, param: Tensor):
        self.owner, self.param = owner, param

    def state_dict(self) -> dict:
        return self.owner._param_state(self.param)

    def load_state_dict(self, state: dict) -> None:
        self.owner._load_param_state(self.param, state)


class MultiTensorOptim(PyroOptim):
    """A :class:`~pyro.optim.PyroOptim` whose parameters share one torch optimizer.

    :param optim_constructor: a :class:`torch.optim.Optimizer` subclass.
    :param optim_args: its keyword arguments, or a callable ``f(param_name) -> dict`` for per-parameter arguments
        (the name as in ``nn.Module.named_parameters``; parameters with equal arguments share a parameter group).
    :param clip_args: ``{"clip_norm": ..., "clip_value": ...}`` or a callable ``f(module_name, param_name) -> dict``,
        as in :class:`~pyro.optim.PyroOptim` (per tensor).
    :raises ValueError: for an optimizer that is not a torch optimizer class, an unknown option name or a learning
        rate that is not a finite non-negative number (for a callable, at the step that first sees the parameter).
    """

    def __init__(
        self,
        optim_constructor: type[torch.optim.Optimizer],
        optim_args: dict | Callable[[str], dict],
        clip_args: dict | Callable[[str, str], dict] | None = None,
    ):
        if not (isinstance(optim_constructor, type) and issubclass(optim_constructor, torch.optim.Optimizer)):
            raise ValueError(f"optim_constructor must be a torch.optim.Optimizer class, got {optim_constructor!r}")
        if callable(optim_args) and not isinstance(optim_args, dict):
            if len(inspect.signature(optim_args).parameters) != 1:
                raise ValueError("a callable optim_args takes one argument, the parameter's name")
        else:
            optim_args = dict(_check_args(optim_constructor, optim_args, optim_constructor.__name__))
        super().__init__(optim_constructor, optim_args, clip_args)
        self.optimizer: torch.optim.Optimizer | None = None
        self._loaded: dict[int, dict] = {}  # group id -> options loaded into it since the last step
        self._had_grad: set[Tensor] = set()  # SVI would have zeroed, not cleared, their gradients

    # -- parameters and groups ---------------------------------------------------------------------------------
    def _get_optim_args(self, param: Tensor) -> dict:
        name = pyro.get_param_store().param_name(param)
        if callable(self.pt_optim_args):
            args = self.pt_optim_args(normalize_param_name(name))
            return _check_args(self.pt_optim_constructor, args, f"optim_args({name!r})")
        return self.pt_optim_args

    def _options(self, args: dict) -> dict:
        """The full options of a group: the constructor's defaults, then ``args``."""
        return {**{k: v for k, v in _defaults(self.pt_optim_constructor).items() if v is not _EMPTY}, **args}

    def _place(self, param: Tensor, options: dict) -> None:
        """Put ``param`` in the group with these options (a new one if none has them)."""
        if self.optimizer is None:
            self.optimizer = self.pt_optim_constructor([{"params": [param], **options}], **options)
            return
        for group in self.optimizer.param_groups:
            if _matches(group, options):
                group["params"].append(param)
                return
        self._new_group()
        self.optimizer.add_param_group({"params": [param], **options})

    def _new_group(self) -> None:
        """Called before a parameter group is added after the first step's."""

    def _group(self, param: Tensor) -> dict:
        for group in self.optimizer.param_groups:
            if any(p is param for p in group["params"]):
                return group
        raise KeyError("parameter not in this optimizer")

    def _add(self, params: list[Tensor]) -> None:
        store = pyro.get_param_store()
        for p in params:
            self._place(p, self._options(self._get_optim_args(p)))
            self.optim_objs[p] = _Slot(self, p)
            self.grad_clip[p] = self._get_grad_clip(p)
            state = self._state_waiting_to_be_consumed.pop(store.param_name(p), None)
            if state is not None:
                self._load_param_state(p, state)

    # -- the step ----------------------------------------------------------------------------------------------
    def __call__(self, params: Iterable[Tensor], *args, **kwargs) -> None:
        """One step of the shared optimizer on ``params`` (new ones join it first).

        As with :mod:`pyro.optim` and SVI's ``zero_grads``: parameters not in ``params`` are not updated, and one in
        ``params`` without a gradient is updated with a zero gradient once it has had one (momentum moves it). The
        gradients of ``params`` are set to ``None`` after the step.
        """
        params = list(params)
        new = [p for p in params if p not in self.optim_objs]
        if new:
            self._add(new)
        if not params:
            return
        if len(params) != len(self.optim_objs):
            current = set(params)
            for p in self.optim_objs:
                if p not in current:
                    p.grad = None
        for p in params:
            if p.grad is None:
                if p in self._had_grad:
                    p.grad = torch.zeros_like(p)
            else:
                self._had_grad.add(p)
            clip = self.grad_clip[p]
            if clip is not None:
                clip(p)
        self.optimizer.step(*args, **kwargs)
        self._loaded.clear()
        for p in params:
            p.grad = None

    # -- state, in pyro.optim's format -------------------------------------------------------------------------
    def _param_state(self, param: Tensor) -> dict:
        """A one-parameter torch optimizer state: ``{"state": {0: ...}, "param_groups": [{..., "params": [0]}]}``."""
        group = self._group(param)
        state = self.optimizer.state.get(param)
        options = {k: v for k, v in group.items() if k != "params"}
        return {"state": {0: dict(state)} if state else {}, "param_groups": [{**options, "params": [0]}]}

    def _load_param_state(self, param: Tensor, state: dict) -> None:
        name = pyro.get_param_store().param_name(param)
        if isinstance(state, dict) and set(state) == {"scheduler", "optimizer"}:  # a pyro.optim scheduler's entry
            self._load_scheduler_state(state["scheduler"])
            state = state["optimizer"]
        groups = state.get("param_groups") if isinstance(state, dict) else None
        if not (isinstance(groups, list) and len(groups) == 1 and len(groups[0].get("params", ())) == 1):
            raise ValueError(
                f"the optimizer state of {name!r} is not a one-parameter torch optimizer state (the format of "
                "pyro.optim and dgm_ppl.optim): it cannot be resumed by this optimizer"
            )
        group = self._group(param)
        options = {k: v for k, v in groups[0].items() if k != "params"}
        options.update({k: group[k] for k in _IMPLEMENTATION if k in group})  # keep this optimizer's kernels
        missing = sorted(set(group) - set(options) - {"params"})
        if missing:
            raise ValueError(f"the optimizer state of {name!r} lacks the options {missing} of {type(self.optimizer)}")
        # The saved hyperparameters (a scheduled lr, say) replace the group's; should another parameter of the group
        # have loaded others since the last step, this one moves to a group of its own.
        loaded = self._loaded.get(id(group))
        if loaded is None or all(_same(loaded.get(k, _EMPTY), v) for k, v in options.items()):
            group.update(options)
        else:
            group["params"] = [p for p in group["params"] if p is not param]
            self._new_group()
            self.optimizer.add_param_group({"params": [param], **options})
            group = self.optimizer.param_groups[-1]
        self._loaded[id(group)] = options
        saved = state.get("state", {}).get(groups[0]["params"][0])
        if not saved:
            self.optimizer.state.pop(param, None)
            return
        on_device = group.get("fused") or group.get("capturable")
        self.optimizer.state[param] = {k: self._cast(param, k, v, on_device) for k, v in saved.items()}

    @staticmethod
    def _cast(param: Tensor, key: str, value, on_device: bool):
        """As torch's ``load_state_dict``: the step count stays a float32 tensor (on the device for fused or
        capturable kernels), other floating tensors take the parameter's dtype and device; always a copy."""
        if not isinstance(value, Tensor):
            return value
        if key == "step":
            return value.to(device=param.device if on_device else value.device, dtype=torch.float32, copy=True)
        dtype = param.dtype if value.is_floating_point() else value.dtype
        return value.to(device=param.device, dtype=dtype, copy=True)

    def _load_scheduler_state(self, state: dict) -> None:
        raise ValueError("the state holds a learning-rate scheduler's; load it into a MultiTensorLRScheduler")

    def get_state(self) -> dict:
        """``{param_name: one-parameter torch optimizer state}`` (as :meth:`pyro.optim.PyroOptim.get_state`)."""
        store = pyro.get_param_store()
        return {store.param_name(p): slot.state_dict() for p, slot in self.optim_objs.items()}

    def set_lr(self, lr: float | Callable[[str], float]) -> None:
        """Set the learning rate of every parameter: those already stepped, those whose loaded state (a resumed
        checkpoint) waits for their first step, and those still to come. A schedule written as a function of the
        epoch can then call it at the start of each epoch, with nothing to save beyond the epoch counter.

        With per-parameter (callable) ``optim_args`` the rate replaces each parameter's ``lr``, and its other
        options (a weight decay on the weights only, say) are kept.

        :param lr: the new rate, finite and non-negative; or a callable of the parameter's name (as ``optim_args``
            sees it) giving each parameter its own, so that rates per layer follow one schedule
            (``lambda name: base * scale(name)``). Parameters that shared a group and now differ in rate are moved
            to groups of their own, their optimizer state kept.
        :raises ValueError: for a rate that is not finite and non-negative.
        """
        rate = lr if callable(lr) else (lambda name: lr)
        checked: dict[str, float] = {}

        def rate_of(name: str) -> float:
            name = normalize_param_name(name)
            if name not in checked:
                value = rate(name)
                if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                    where = f" (for {name!r})" if callable(lr) else ""
                    raise ValueError(f"lr must be a finite non-negative number, got {value!r}{where}")
                checked[name] = value
            return checked[name]

        if not callable(lr):
            rate_of("")  # a bad constant is refused before anything changes
        store = pyro.get_param_store()
        live = [(group, [rate_of(store.param_name(p)) for p in group["params"]]) for group in self._live_groups()]
        waiting = {name: rate_of(name) for name in self._state_waiting_to_be_consumed}
        if any(len(set(rates)) > 1 for _, rates in live):
            self._new_group()  # a scheduler that cannot take new groups refuses here, before anything changes
        if callable(self.pt_optim_args) and not isinstance(self.pt_optim_args, dict):
            per_parameter = getattr(self.pt_optim_args, "per_parameter", self.pt_optim_args)
        else:
            per_parameter = (lambda fixed: lambda name: fixed)(self.pt_optim_args)
        if callable(lr) or not isinstance(self.pt_optim_args, dict):

            def optim_args(name: str) -> dict:
                return {**per_parameter(name), "lr": rate_of(name)}

            optim_args.per_parameter = per_parameter  # the user's callable, so that rates do not nest
            self.pt_optim_args = optim_args
        else:
            self.pt_optim_args = {**self.pt_optim_args, "lr": lr}
        for name, value in waiting.items():
            state = self._state_waiting_to_be_consumed[name]
            inner = state["optimizer"] if set(state) == {"scheduler", "optimizer"} else state
            for group in inner.get("param_groups", ()):
                group["lr"] = value
        for group, rates in live:
            self._set_group_lr(group, rates)

    def _live_groups(self) -> list[dict]:
        return list(self.optimizer.param_groups) if self.optimizer is not None else []

    def _set_group_lr(self, group: dict, rates: list[float]) -> None:
        """Give the parameters of ``group`` the rates ``rates`` (in order); those whose rate differs from the
        first's move to groups of their own (one per rate), keeping their state, which torch holds per parameter."""
        group["lr"] = rates[0]
        if all(r == rates[0] for r in rates):
            return
        options = {k: v for k, v in group.items() if k != "params"}
        moved: dict[float, list[Tensor]] = {}
        for p, r in zip(list(group["params"]), rates):
            if r != rates[0]:
                moved.setdefault(r, []).append(p)
        group["params"] = [p for p, r in zip(group["params"], rates) if r == rates[0]]
        for r, params in moved.items():
            self._new_group()
            self.optimizer.add_param_group({**options, "params": params, "lr": r})

    def set_state(self, state_dict: dict) -> None:
        """Load states from :meth:`get_state` (of this class or of :mod:`pyro.optim`): now for the parameters this
        optimizer has seen, at their first step for the others."""
        live = {pyro.get_param_store().param_name(p): p for p in self.optim_objs}
        for name, state in state_dict.items():
            if name in live:
                self._load_param_state(live[name], state)
            else:
                self._state_waiting_to_be_consumed[name] = state


class MultiTensorLRScheduler(MultiTensorOptim):
    """A torch learning-rate scheduler over a :class:`MultiTensorOptim`, with the interface of
    :class:`pyro.optim.PyroLRScheduler`: ``optim_args`` holds ``"optimizer"`` (a torch optimizer class),
    ``"optim_args"`` (its arguments, or a callable of the parameter name) and the scheduler's own arguments; call
    :meth:`step` (e.g. once per epoch) to advance the schedule.

    The scheduler is built at the first SVI step, over the parameter groups that step creates: a parameter that
    appears later with new optimizer arguments (a new group) raises ``ValueError``.

    :param scheduler_constructor: a :mod:`torch.optim.lr_scheduler` class.
    :param optim_args: as above.
    :param clip_args: as in :class:`MultiTensorOptim`.
    """

    def __init__(self, scheduler_constructor, optim_args: dict, clip_args=None):
        if not isinstance(optim_args, dict) or not {"optimizer", "optim_args"} <= set(optim_args):
            raise ValueError("optim_args must be a dict with the keys 'optimizer' and 'optim_args'")
        kwargs = dict(optim_args)
        optimizer, args = kwargs.pop("optimizer"), kwargs.pop("optim_args")
        known = set(inspect.signature(scheduler_constructor.__init__).parameters) - {"self", "optimizer"}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(
                f"unknown option(s) {unknown} for {scheduler_constructor.__name__}; known: {sorted(known)}"
            )
        super().__init__(optimizer, args, clip_args)
        self.pt_scheduler_constructor, self.kwargs = scheduler_constructor, kwargs
        self.scheduler = None
        self._scheduler_state: dict | None = None

    def _new_group(self) -> None:
        if self.scheduler is not None:
            raise ValueError(
                "a parameter with new optimizer arguments appeared after the learning-rate scheduler was built (at the "
                "first step): the scheduler cannot take a new parameter group"
            )

    def _add(self, params: list[Tensor]) -> None:
        super()._add(params)
        if self.scheduler is None and self.optimizer is not None:
            self.scheduler = self.pt_scheduler_constructor(self.optimizer, **self.kwargs)
            if self._scheduler_state is not None:
                self.scheduler.load_state_dict(self._scheduler_state)
                self._scheduler_state = None

    def _load_scheduler_state(self, state: dict) -> None:
        if self.scheduler is None:
            self._scheduler_state = state
        else:
            self.scheduler.load_state_dict(state)

    def _param_state(self, param: Tensor) -> dict:
        return {"scheduler": self.scheduler.state_dict(), "optimizer": super()._param_state(param)}

    def step(self, *args, **kwargs) -> None:
        """Advance the schedule (arguments as the torch scheduler's, e.g. the loss for ``ReduceLROnPlateau``)."""
        if self.scheduler is not None:
            self.scheduler.step(*args, **kwargs)


def _optimizer(optimizer: type[torch.optim.Optimizer]):
    def factory(optim_args: dict | Callable[[str], dict], clip_args: dict | None = None) -> MultiTensorOptim:
        return MultiTensorOptim(optimizer, optim_args, clip_args)

    factory.__name__ = factory.__qualname__ = optimizer.__name__
    factory.__doc__ = (
        f"A :class:`MultiTensorOptim` over :class:`torch.optim.{optimizer.__name__}`, with the signature of "
        f"``pyro.optim.{optimizer.__name__}``.\n\n"
        ":param optim_args: the optimizer's keyword arguments, or ``f(param_name) -> dict``.\n"
        ":param clip_args: gradient clipping, as in :class:`~pyro.optim.PyroOptim`.\n"
        ":returns: the optimizer, for :class:`~pyro.infer.SVI`.\n"
        ":raises ValueError: for an unknown option name or a learning rate that is not finite and non-negative."
    )
    return factory


def _scheduler(scheduler):
    def factory(optim_args: dict, clip_args: dict | None = None) -> MultiTensorLRScheduler:
        return MultiTensorLRScheduler(scheduler, optim_args, clip_args)

    factory.__name__ = factory.__qualname__ = scheduler.__name__
    factory.__doc__ = (
        f"A :class:`MultiTensorLRScheduler` with :class:`torch.optim.lr_scheduler.{scheduler.__name__}`, with the "
        f"signature of ``pyro.optim.{scheduler.__name__}``.\n\n"
        ":param optim_args: ``{'optimizer': ..., 'optim_args': ..., **scheduler_args}``.\n"
        ":param clip_args: gradient clipping, as in :class:`~pyro.optim.PyroOptim`.\n"
        ":returns: the optimizer, for :class:`~pyro.infer.SVI`; call its ``step()`` to advance the schedule."
    )
    return factory


Adam = _optimizer(torch.optim.Adam)
AdamW = _optimizer(torch.optim.AdamW)
SGD = _optimizer(torch.optim.SGD)
RMSprop = _optimizer(torch.optim.RMSprop)
Adagrad = _optimizer(torch.optim.Adagrad)
ExponentialLR = _scheduler(torch.optim.lr_scheduler.ExponentialLR)
StepLR = _scheduler(torch.optim.lr_scheduler.StepLR)
MultiStepLR = _scheduler(torch.optim.lr_scheduler.MultiStepLR)
CosineAnnealingLR = _scheduler(torch.optim.lr_scheduler.CosineAnnealingLR)
LambdaLR = _scheduler(torch.optim.lr_scheduler.LambdaLR)
ReduceLROnPlateau = _scheduler(torch.optim.lr_scheduler.ReduceLROnPlateau)
