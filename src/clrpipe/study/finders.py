"""Other LR finders' suggestions, computed from clrpipe's own sweep curves. Pure numpy.

Each rule is re-implemented from its published source, on the raw per-batch losses of one
sweep (lrs and losses as recorded, before any smoothing), with the tool's own smoothing and
trimming, so the only difference to running the tool is the sweep itself (clrpipe's range, steps
and divergence stop; each tool would also stop at its own threshold):

- fastai 2.8.4, `fastai/callback/schedule.py`: `lr_find` keeps `recorder.losses[num_it//10:-5]`
  (line 298; the recorder's losses are `AvgSmoothLoss`, a debiased EMA with beta 0.98,
  `fastai/learner.py` line 517) up to the first NaN; `valley` (lines 215-233): the longest
  strictly decreasing subsequence, the index `start + int(len/3) + int(len/3/2)`; `minimum`
  (lines 254-258): the lr of the lowest loss, divided by 10.
- Lightning, `lightning/pytorch/tuner/lr_finder.py`: losses smoothed by the same debiased EMA
  (beta 0.98, lines 407-411 in 2.5.3; the debiasing one step ahead: `debiased_ema(first=2)`);
  `suggestion(skip_begin=10, skip_end=1)` drops
  non-finite losses and takes the most negative `torch.gradient`: up to 2.5.2 against the index
  (lines 206-209: for an exponential sweep, the slope in log-LR; the index it returns ignores
  dropped losses), from 2.5.3 against the lr itself (`spacing=[lrs]`, line 190).
- torch-lr-finder 0.2.2, `torch_lr_finder/lr_finder.py`: losses smoothed by
  `smooth_f * loss + (1 - smooth_f) * previous` with smooth_f 0.05 (line 364; the first loss
  as it is), `plot(skip_start=10, skip_end=5)` (lines 528-529), the lr of the most negative
  `np.gradient(losses)` (against the index, line 543).

`torch.gradient` with coordinates uses numpy's second-order formula, so `np.gradient` stands in
for it here (no torch needed).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "RULES",
    "debiased_ema",
    "fastai_minimum",
    "fastai_valley",
    "lightning_steepest",
    "suggest_all",
    "torch_lr_finder_ema",
    "torch_lr_finder_steepest",
]


def debiased_ema(losses: Sequence[float], beta: float = 0.98, first: int = 1) -> np.ndarray:
    """fastai's `AvgSmoothLoss` and Lightning's smoothing: avg = beta avg + (1 - beta) loss,
    divided by 1 - beta^(first + i) at batch i. fastai: first = 1 (its count after the first
    batch); Lightning: first = 2 (`global_step + 1`, and `global_step` is already 1 when the
    first batch's loss is recorded, after its optimizer step)."""
    x = np.asarray(losses, float)
    out, avg = np.empty_like(x), 0.0
    for i, loss in enumerate(x):
        avg = beta * avg + (1 - beta) * loss
        out[i] = avg / (1 - beta ** (first + i))
    return out


def torch_lr_finder_ema(losses: Sequence[float], smooth_f: float = 0.05) -> np.ndarray:
    """torch-lr-finder's smoothing: the first loss as it is, then smooth_f loss + (1 - smooth_f)
    previous smoothed loss."""
    x = np.asarray(losses, float)
    out = x.copy()
    for i in range(1, x.size):
        out[i] = smooth_f * x[i] + (1 - smooth_f) * out[i - 1]
    return out


def _fastai_slice(lrs, losses) -> tuple[np.ndarray, np.ndarray]:
    """What fastai's `lr_find` hands its suggestion functions: [num_it//10:-5], cut at the
    first NaN."""
    lrs, smoothed = np.asarray(lrs, float), debiased_ema(losses)
    num_it = lrs.size
    lrs, smoothed = lrs[num_it // 10: -5], smoothed[num_it // 10: -5]
    nan = np.flatnonzero(np.isnan(smoothed))
    if nan.size:
        lrs, smoothed = lrs[: nan[0]], smoothed[: nan[0]]
    return lrs, smoothed


def fastai_valley(lrs: Sequence[float], losses: Sequence[float]) -> float | None:
    """fastai's `valley` (see the module docstring), on the raw sweep."""
    lrs, smoothed = _fastai_slice(lrs, losses)
    n = smoothed.size
    if n == 0:
        return None
    max_start, max_end = 0, 0
    lds = [1] * n
    for i in range(1, n):
        for j in range(i):
            if smoothed[i] < smoothed[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    return float(lrs[max_start + int(sections) + int(sections / 2)])


def fastai_minimum(lrs: Sequence[float], losses: Sequence[float]) -> float | None:
    """fastai's `minimum`: the lr of the lowest smoothed loss / 10."""
    lrs, smoothed = _fastai_slice(lrs, losses)
    return float(lrs[int(np.argmin(smoothed))]) / 10 if smoothed.size else None


def lightning_steepest(lrs: Sequence[float], losses: Sequence[float],
                       version: str = "2.5.3") -> float | None:
    """Lightning's `suggestion()`: "2.5.2" (and earlier) the slope against the index, "2.5.3"
    (and later) against the lr."""
    all_lrs, smoothed = np.asarray(lrs, float), debiased_ema(losses, first=2)
    kept_lrs, kept = all_lrs[10:-1], smoothed[10:-1]
    finite = np.isfinite(kept)
    kept_lrs, kept = kept_lrs[finite], kept[finite]
    if kept.size < 2:
        return None
    if version == "2.5.2":
        return float(all_lrs[int(np.argmin(np.gradient(kept))) + 10])
    return float(kept_lrs[int(np.argmin(np.gradient(kept, kept_lrs)))])


def torch_lr_finder_steepest(lrs: Sequence[float], losses: Sequence[float]) -> float | None:
    """torch-lr-finder's suggestion: the most negative gradient against the index, on the
    sweep up to its first non-finite loss (its test stops at divergence; a NaN would poison
    its running average)."""
    x = np.asarray(losses, float)
    end = int(np.argmin(np.isfinite(x))) if not np.isfinite(x).all() else x.size
    lrs, smoothed = np.asarray(lrs, float)[:end], torch_lr_finder_ema(x[:end])
    if lrs.size < 17:  # its own check: skip_start + skip_end + 2
        return None
    lrs, smoothed = lrs[10:-5], smoothed[10:-5]
    return float(lrs[int(np.argmin(np.gradient(smoothed)))])


RULES = {
    "fastai_valley": fastai_valley,
    "fastai_minimum_div10": fastai_minimum,
    "lightning_steepest_log": lambda lrs, losses: lightning_steepest(lrs, losses, "2.5.2"),
    "lightning_steepest_2_5_3": lightning_steepest,
    "torch_lr_finder_steepest": torch_lr_finder_steepest,
}
"""Name -> rule(lrs, raw losses) -> suggested lr or None."""


def suggest_all(curves: Sequence[tuple[Sequence[float], Sequence[float]]]) -> dict:
    """Every rule on every seed's (lrs, raw losses), and per rule the median over the seeds
    that gave a suggestion (None when none did)."""
    found = {}
    for name, rule in RULES.items():
        per_seed = [rule(lrs, losses) for lrs, losses in curves]
        kept = [v for v in per_seed if v is not None]
        found[name] = {"median": float(np.median(kept)) if kept else None,
                       "per_seed": per_seed}
    return found
