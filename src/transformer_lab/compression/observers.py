"""Calibration observers: watch the tensors a layer sees and choose the range [lo, hi] its grid covers.

- ``MinMaxObserver``: the extremes seen. Nothing is clipped, but one outlier stretches the grid and
  every ordinary value loses resolution (the long-tail problem the canon asks about).
- ``PercentileObserver``: the range that holds p% of the values, (100 - p)/2 % cut from each tail
  (symmetric: the p-th percentile of |x|), as ``onnxruntime.quantization``'s Percentile calibration
  defines it; the tail beyond is clipped to the edge.
- ``MSEObserver``: of ``candidates`` thresholds from absmax/candidates to absmax, the one whose
  fake-quantized tensor has the least mean squared error against the original: it trades clipping
  error on the tail against rounding error on the bulk.
- ``KLObserver``: entropy calibration (TensorRT's, Migacz 2017, as ``onnxruntime.quantization``'s
  EntropyCalibrater runs it): a fine histogram of the values on [-absmax, absmax]; for each candidate
  window around zero, the reference P (the window's bins, the clipped tail added to its edge bins) and
  Q (the window squeezed into ``quantized_bins`` levels and spread back over P's non-empty bins); the
  window with the least KL(P || Q) is the range. It keeps the shape of the distribution, not the
  squared error.

Each takes tensors with ``observe(x)`` (batches accumulate) and gives ``qparams()``; with ``axis``
(per channel) every slice along that dimension gets its own range. Percentile and MSE keep what they
observe (up to ``max_values`` values per channel, a seeded sample beyond that).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from transformer_lab.compression.quant import QParams, fake_quantize, qparams_from_range


class Observer:
    def __init__(self, bits: int = 8, symmetric: bool = False, axis: int | None = None):
        self.bits, self.symmetric, self.axis = bits, symmetric, axis
        self.count = 0

    def _channels(self, x: Tensor) -> Tensor:
        """x as (C, N) rows per channel, or (1, N) per tensor."""
        x = x.detach().float()
        if self.axis is None:
            return x.reshape(1, -1)
        if not -x.dim() <= self.axis < x.dim():
            raise ValueError(f"axis: {self.axis} is not a dimension of a tensor of shape {tuple(x.shape)}")
        return x.movedim(self.axis, 0).reshape(x.size(self.axis), -1)

    def observe(self, x: Tensor) -> None:
        if x.numel() == 0:
            raise ValueError("observe: an empty tensor (no calibration values)")
        rows = self._channels(x)
        if not torch.isfinite(rows).all():
            raise ValueError("observe: the tensor holds NaN or inf; calibrate on finite values")
        self._add(rows)
        self.count += 1

    def range(self) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def qparams(self) -> QParams:
        if not self.count:
            raise ValueError(f"{type(self).__name__}: nothing observed; calibrate before asking for the grid")
        lo, hi = self.range()
        if self.axis is None:
            lo, hi = lo[0], hi[0]
        return qparams_from_range(lo, hi, self.bits, self.symmetric, self.axis)

    def _add(self, rows: Tensor) -> None:
        raise NotImplementedError


class MinMaxObserver(Observer):
    def __init__(self, bits: int = 8, symmetric: bool = False, axis: int | None = None):
        super().__init__(bits, symmetric, axis)
        self.lo: Tensor | None = None
        self.hi: Tensor | None = None

    def _add(self, rows: Tensor) -> None:
        lo, hi = rows.min(dim=1).values, rows.max(dim=1).values
        if self.lo is not None and self.lo.shape != lo.shape:
            raise ValueError(f"observe: {lo.numel()} channels, earlier tensors had {self.lo.numel()}")
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)

    def range(self) -> tuple[Tensor, Tensor]:
        return self.lo, self.hi


class _Keeping(Observer):
    """Keeps the observed values (per channel), sampled down to ``max_values`` with a seeded generator."""

    def __init__(self, bits: int = 8, symmetric: bool = False, axis: int | None = None, max_values: int = 1 << 20):
        super().__init__(bits, symmetric, axis)
        self.max_values = max_values
        self.values: Tensor | None = None
        self.generator = torch.Generator().manual_seed(0)

    def _add(self, rows: Tensor) -> None:
        if self.values is not None and self.values.size(0) != rows.size(0):
            raise ValueError(f"observe: {rows.size(0)} channels, earlier tensors had {self.values.size(0)}")
        values = rows if self.values is None else torch.cat([self.values, rows], dim=1)
        if values.size(1) > self.max_values:
            keep = torch.randperm(values.size(1), generator=self.generator)[: self.max_values]
            values = values[:, keep]
        self.values = values


class PercentileObserver(_Keeping):
    def __init__(self, percentile: float = 99.99, bits: int = 8, symmetric: bool = False, axis: int | None = None,
                 max_values: int = 1 << 20):
        super().__init__(bits, symmetric, axis, max_values)
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"percentile: expected 50 < p <= 100, got {percentile}")
        self.percentile = percentile

    def range(self) -> tuple[Tensor, Tensor]:
        q = self.percentile / 100.0
        if self.symmetric:
            hi = torch.quantile(self.values.abs(), q, dim=1)
            return -hi, hi
        cut = (1.0 - q) / 2.0  # from each tail: the range holds p% of the values
        return torch.quantile(self.values, cut, dim=1), torch.quantile(self.values, 1.0 - cut, dim=1)


class MSEObserver(_Keeping):
    def __init__(self, candidates: int = 100, bits: int = 8, symmetric: bool = False, axis: int | None = None,
                 max_values: int = 1 << 20):
        super().__init__(bits, symmetric, axis, max_values)
        if candidates < 1:
            raise ValueError(f"candidates: expected >= 1, got {candidates}")
        self.candidates = candidates

    def errors(self) -> tuple[Tensor, Tensor]:
        """(fractions (K,), mean squared error (C, K)): the range [fraction · lo, fraction · hi] of the
        min-max range, for each candidate fraction k / K."""
        x = self.values
        lo, hi = x.min(dim=1).values, x.max(dim=1).values
        if self.symmetric:
            hi = torch.maximum(-lo, hi)
            lo = -hi
        fractions = torch.arange(1, self.candidates + 1, dtype=torch.float32) / self.candidates
        errs = torch.empty(x.size(0), self.candidates)
        for k, f in enumerate(fractions):
            p = qparams_from_range(lo * f, hi * f, self.bits, self.symmetric, axis=0)
            errs[:, k] = (fake_quantize(x, p) - x).pow(2).mean(dim=1)
        return fractions, errs

    def range(self) -> tuple[Tensor, Tensor]:
        fractions, errs = self.errors()
        best = fractions[errs.argmin(dim=1)]  # (C,)
        lo, hi = self.values.min(dim=1).values, self.values.max(dim=1).values
        if self.symmetric:
            hi = torch.maximum(-lo, hi)
            lo = -hi
        return lo * best, hi * best


class KLObserver(_Keeping):
    def __init__(self, bins: int = 2048, quantized_bins: int = 128, bits: int = 8, symmetric: bool = True,
                 axis: int | None = None, max_values: int = 1 << 20, onnxruntime_compatible: bool = False):
        super().__init__(bits, symmetric, axis, max_values)
        if quantized_bins < 2 or bins < quantized_bins:
            raise ValueError(f"bins, quantized_bins: expected 2 <= quantized_bins <= bins, got {quantized_bins}, {bins}")
        self.bins, self.quantized_bins = bins, quantized_bins
        # onnxruntime's port differs from the published algorithm (MXNet's, TensorRT's) in Q: it truncates the
        # spread counts to integers, fills a level's empty bins too, and leaves the remainder bins at 0.
        self.onnxruntime_compatible = onnxruntime_compatible

    def histogram(self, row: Tensor) -> tuple[Tensor, Tensor]:
        """(counts (bins,), edges (bins + 1,)) of ``row`` on [-absmax, absmax]."""
        t = float(row.abs().max())
        counts = torch.histc(row, self.bins, -t, t)
        return counts.double(), torch.linspace(-t, t, self.bins + 1)

    @staticmethod
    def _smooth(p: np.ndarray, eps: float = 1e-4) -> np.ndarray | None:
        """Empty bins get eps, taken evenly off the others, so KL stays finite (None: all empty)."""
        zeros = p == 0
        n_nonzero = int((~zeros).sum())
        if not n_nonzero:
            return None
        return p + eps * zeros - eps * int(zeros.sum()) / n_nonzero * (~zeros)

    def divergences(self, row: Tensor) -> tuple[list[tuple[float, float]], Tensor]:
        """Each candidate window's (lo, hi) and KL(P || Q). (In NumPy: about a thousand windows of at most
        ``bins`` values each, where a PyTorch call's fixed cost was most of the time: 3.6-4.2x slower, the same
        windows and thresholds)."""
        counts, edges = self.histogram(row)
        c, e = counts.numpy(), edges.tolist()
        below = np.concatenate([[0.0], np.cumsum(c)])  # below[k]: the count of bins 0..k-1 (exact: integers)
        zero_bin, half = self.bins // 2, self.quantized_bins // 2
        windows, kls = [], []
        for i in range(half, zero_bin + 1):
            start, end = zero_bin - i, min(zero_bin + i + 1, self.bins)
            window = c[start:end]
            p = window.copy()
            p[0] += below[start]  # the clipped tails pile up at the edges
            p[-1] += below[-1] - below[end]
            merged = len(window) // self.quantized_bins  # bins per quantized level
            body = merged * self.quantized_bins  # the rest (fewer than a level's) joins the last level
            levels = window[:body].reshape(-1, merged).sum(axis=1)
            levels[-1] += window[body:].sum()
            q, used = np.zeros_like(p), p != 0
            per_level = used[:body].reshape(-1, merged).sum(axis=1)  # P's non-empty bins in each level
            if self.onnxruntime_compatible:  # integer counts on every bin of the level; the rest stay 0
                q[:body] = np.repeat(np.floor(levels / np.maximum(per_level, 1)), merged)
            else:  # each level's count spread evenly over its bins that P has values in (the last takes the rest)
                per_level[-1] += used[body:].sum()
                share = levels / np.maximum(per_level, 1)
                q[:body] = used[:body] * np.repeat(share, merged)
                q[body:] = used[body:] * share[-1]
            ps, qs = self._smooth(p), self._smooth(q)
            if ps is None or qs is None:
                kls.append(float("inf"))
            else:
                ps, qs = ps / ps.sum(), qs / qs.sum()
                kls.append(float((ps * np.log(ps / qs)).sum()))
            windows.append((e[start], e[end]))
        return windows, torch.tensor(kls)

    def range(self) -> tuple[Tensor, Tensor]:
        los, his = [], []
        for row in self.values:
            windows, kls = self.divergences(row)
            lo, hi = windows[int(kls.argmin())]
            los.append(max(lo, float(row.min())))
            his.append(min(hi, float(row.max())))
        return torch.tensor(los), torch.tensor(his)


OBSERVERS = {"minmax": MinMaxObserver, "percentile": PercentileObserver, "mse": MSEObserver, "kl": KLObserver}
