"""Effect handlers shared by the losses and the converters."""

from __future__ import annotations

from collections.abc import Callable

from pyro.poutine.uncondition_messenger import UnconditionMessenger

__all__ = ["uncondition_data", "is_deterministic"]


def is_deterministic(site: dict) -> bool:
    """Whether a trace site is a :func:`pyro.deterministic` record (a masked ``Delta`` observed at its value)."""
    return bool(site["infer"].get("_deterministic"))


class UnconditionDataMessenger(UnconditionMessenger):
    """:class:`~pyro.poutine.uncondition_messenger.UnconditionMessenger` that leaves :func:`pyro.deterministic`
    sites alone.

    ``poutine.uncondition`` turns every observed site into a latent one, including the masked ``Delta`` that
    ``pyro.deterministic`` records. Inside a plate that ``Delta``'s default ``event_dim`` already holds the plate's
    dimension, so the re-sampled value gains the plate's dimension a second time and everything downstream of it
    (e.g. ``obs ~ Normal(theta, sigma)``) gets the wrong shape without any error. Here a deterministic site keeps
    its computed value, as in :class:`pyro.infer.Predictive`; only data sites are unconditioned (their data are
    kept in ``site["infer"]["obs"]``).
    """

    def _pyro_sample(self, msg: dict) -> None:
        if is_deterministic(msg):
            return
        super()._pyro_sample(msg)


def uncondition_data(fn: Callable | None = None):
    """Remove the observations of ``fn``'s data sites, but not of its ``pyro.deterministic`` sites.

    :param fn: a stochastic function (model); None gives the handler, for use as a context manager.
    :returns: the handled function, or the messenger when ``fn`` is None.
    """
    messenger = UnconditionDataMessenger()
    return messenger if fn is None else messenger(fn)
