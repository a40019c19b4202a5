"""``run.watch()``: histograms of a PyTorch model's gradients and parameters.

Each trainable parameter gets a gradient hook (``Tensor.register_hook``). The
hook counts the backward passes that reach its parameter; on every
``log_freq``-th one it bins the gradient (and/or the parameter) on the tensor's
own device, copies only the bin counts and the range to the CPU, and queues a
:class:`~pipeline.Histogram` with ``run.attach()`` so it rides along with the user's next
``log()``. On every other pass the hook only bumps a counter, which is what
keeps watching cheap.

Keys are ``gradients/<name>`` and ``parameters/<name>`` with the names of
``model.named_parameters()`` (``"0.weight"``). runbus makes these keys itself,
so they skip the metric-name policy (``attach`` does not check names).

The hooks hold the parameter only through a weak reference and keep nothing
between passes, so a watched training loop holds no old tensors or graphs.
torch is imported only when ``watch()`` is called: ``unwatch()`` and
``finish()`` work without it.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.media.histogram import DEFAULT_BINS, Histogram

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.utils.hooks import RemovableHandle

    from pipeline.run import Run

#: What ``log=`` may be, and which histograms each one records.
LOG_CHOICES: dict[str, tuple[bool, bool]] = {
    "gradients": (True, False),
    "parameters": (False, True),
    "all": (True, True),
}
#: Bins of every histogram (the ``Histogram`` media type's default).
BINS = DEFAULT_BINS

# Runs whose finish() already removes their watches (so each run gets one closer).
_closing: weakref.WeakSet[Run] = weakref.WeakSet()


@dataclass
class _Watch:
    """One watched model of one run: what ``unwatch`` needs to undo it."""

    model: weakref.ref[nn.Module]
    #: Keys are ``gradients/<prefix><name>``; the run's first model has none.
    index: int
    handles: list[RemovableHandle] = field(default_factory=list)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def watch(run: Run, models: Any, *, log: str = "gradients", log_freq: int = 100) -> None:
    """Start recording histograms of ``models`` (one ``nn.Module`` or a list/tuple).

    Watching a model this run already watches replaces that watch (new
    ``log``/``log_freq``, counters start over).

    Raises ``ValueError`` for a bad ``log`` or ``log_freq``, ``TypeError`` for
    something that is not an ``nn.Module``, and ``ImportError`` without PyTorch.
    """
    try:
        from torch import nn
    except ImportError as exc:
        raise ImportError(
            "run.watch() needs PyTorch, which is not installed: pip install 'runbus[torch]'"
        ) from exc
    if not isinstance(log, str) or log not in LOG_CHOICES:
        allowed = ", ".join(repr(c) for c in LOG_CHOICES)
        raise ValueError(f"run.watch(log={log!r}): log must be one of {allowed}")
    if isinstance(log_freq, bool) or not isinstance(log_freq, int) or log_freq < 1:
        raise ValueError(
            f"run.watch(log_freq={log_freq!r}): log_freq must be a positive int "
            f"(histograms every log_freq backward passes, e.g. 100)"
        )
    wanted = _as_modules(models, nn.Module, "run.watch()")
    if not wanted:
        raise ValueError("run.watch() got an empty list of models; pass an nn.Module")
    grads, params = LOG_CHOICES[log]

    watches: list[_Watch] = run._watches
    for model in wanted:
        old = _find(watches, model)
        if old is not None:
            old.remove()
            watches.remove(old)
            index = old.index
        else:
            used = {w.index for w in watches}
            index = next(i for i in range(len(watches) + 1) if i not in used)
        prefix = f"model{index}/" if index else ""
        entry = _Watch(weakref.ref(model), index)
        for name, param in model.named_parameters():
            # A frozen parameter has no gradient to hook, and does not change.
            if param.requires_grad:
                hook = _make_hook(run, param, prefix + name, log_freq, grads, params)
                # torch leaves Tensor.register_hook unannotated.
                handle = param.register_hook(hook)  # type: ignore[no-untyped-call]
                entry.handles.append(handle)
        watches.append(entry)

    if run not in _closing:
        _closing.add(run)
        run._add_closer(lambda: unwatch(run, None))


def unwatch(run: Run, models: Any = None) -> None:
    """Remove the hooks of ``models`` (all of this run's watches when None).

    A model the run does not watch is ignored; anything that is not an
    ``nn.Module`` raises ``TypeError``.
    """
    watches: list[_Watch] = run._watches
    if models is None:
        for entry in watches:
            entry.remove()
        watches.clear()
        return
    if not watches:
        # Nothing to undo; torch may not even be installed, so check types by name.
        items = list(models) if isinstance(models, list | tuple) else [models]
        for item in items:
            if not any(c.__name__ == "Module" for c in type(item).__mro__):
                raise TypeError(
                    f"run.unwatch() takes an nn.Module or a list of them, not {type(item).__name__}"
                )
        return
    from torch import nn

    for model in _as_modules(models, nn.Module, "run.unwatch()"):
        found = _find(watches, model)
        if found is not None:
            found.remove()
            watches.remove(found)


def _as_modules(models: Any, module_type: type[nn.Module], what: str) -> list[nn.Module]:
    """``models`` as a list of distinct modules, or ``TypeError`` naming the bad type."""
    items: Iterable[Any] = models if isinstance(models, list | tuple) else (models,)
    out: list[nn.Module] = []
    for item in items:
        if not isinstance(item, module_type):
            raise TypeError(
                f"{what} takes a torch.nn.Module or a list/tuple of them, not {type(item).__name__}"
            )
        if not any(m is item for m in out):
            out.append(item)
    return out


def _find(watches: list[_Watch], model: nn.Module) -> _Watch | None:
    for entry in watches:
        if entry.model() is model:
            return entry
    return None


def _make_hook(
    run: Run,
    param: torch.Tensor,
    name: str,
    log_freq: int,
    grads: bool,
    params: bool,
) -> Callable[[torch.Tensor], None]:
    """The gradient hook of one parameter: count passes, histogram every ``log_freq``-th."""
    # A weak reference: the hook lives in the parameter's own hook dict, and a
    # strong one would make a cycle that keeps the parameter alive.
    param_ref = weakref.ref(param)
    grad_key = f"gradients/{name}"
    param_key = f"parameters/{name}"
    count = 0

    def hook(grad: torch.Tensor) -> None:
        nonlocal count
        count += 1
        if count < log_freq:
            return
        count = 0
        values: dict[str, Any] = {}
        if grads:
            values[grad_key] = histogram(grad)
        if params:
            p = param_ref()
            if p is not None:
                values[param_key] = histogram(p)
        run.attach(values)

    return hook


def histogram(tensor: torch.Tensor, bins: int = BINS) -> Histogram:
    """A :class:`~pipeline.Histogram` of ``tensor``'s finite values, binned on its device.

    Bins as ``numpy.histogram`` does: equal widths over the finite values'
    min..max (a single value v gets v-0.5..v+0.5), the last bin closed. NaN and
    +-inf are left out and counted in ``dropped``. Unlike
    ``Histogram.from_array``, the tensor never leaves its device: only
    ``bins + 2`` numbers (the counts and the range) are copied to the CPU, in
    one transfer, which matters for large GPU tensors.
    """
    counts, edges, dropped = bin_tensor(tensor, bins)
    return Histogram(np_histogram=(counts, edges), num_bins=bins, dropped=dropped)


def bin_tensor(tensor: torch.Tensor, bins: int = BINS) -> tuple[list[int], list[float], int]:
    """``(counts, edges, dropped)`` of ``tensor``'s finite values (see :func:`histogram`)."""
    import torch

    x = tensor.detach()
    if x.is_sparse:
        x = x.to_dense()
    if x.is_complex():
        x = torch.view_as_real(x)
    x = x.reshape(-1)
    # Half precision would put values near bin edges in the wrong bin.
    if not x.is_floating_point() or x.element_size() < 4:
        x = x.float()
    n = x.numel()
    if n == 0:
        return [0] * bins, _edges(0.0, 1.0, bins), 0

    finite = torch.isfinite(x)
    lo = x.masked_fill(~finite, math.inf).amin()
    hi = x.masked_fill(~finite, -math.inf).amax()
    some = finite.any()
    lo = torch.where(some, lo, 0.0)
    hi = torch.where(some, hi, 1.0)
    same = hi <= lo
    span = torch.where(same, 1.0, hi - lo)
    # Non-finite values are given index 0 but weight 0: no boolean indexing,
    # which would force a device sync to learn the result's size.
    safe = torch.where(finite, x, lo)
    idx = ((safe - lo) * (bins / span)).floor_().clamp_(0, bins - 1).long()
    # All values equal: numpy's range is v-0.5..v+0.5, which puts them mid-way.
    idx = torch.where(same, bins // 2, idx)
    counts = torch.zeros(bins, dtype=torch.long, device=x.device)
    counts.scatter_add_(0, idx, finite.long())
    # float64 holds every count exactly (below 2**53) and the range losslessly;
    # MPS has no float64, so its range goes through float32.
    wide = torch.float32 if x.device.type == "mps" else torch.float64
    packed = torch.cat([counts.to(wide), torch.stack([lo, hi]).to(wide)])
    out = packed.cpu().tolist()
    counted = [int(c) for c in out[:bins]]
    lo_f, hi_f = out[bins], out[bins + 1]
    if hi_f <= lo_f:
        lo_f, hi_f = lo_f - 0.5, hi_f + 0.5
    return counted, _edges(lo_f, hi_f, bins), n - sum(counted)


def _edges(lo: float, hi: float, bins: int) -> list[float]:
    step = (hi - lo) / bins
    return [lo + i * step for i in range(bins)] + [hi]
