"""The integer grid and the calibration observers against ``torch.ao.quantization`` (scales and zero
points of its MinMax observers, its fake-quantize and quantize ops), and what each observer is for:
percentile and MSE clip a long tail that min-max stretches its grid over."""

import pytest
import torch
from torch.ao.quantization import MinMaxObserver as TorchMinMax
from torch.ao.quantization import PerChannelMinMaxObserver as TorchPerChannel

from transformer_lab.compression import (KLObserver, MinMaxObserver, MSEObserver, PercentileObserver, dequantize, fake_quantize,
                                         qparams_from_range, quantize)

SCHEMES = {False: (torch.quint8, torch.per_tensor_affine, torch.per_channel_affine),
           True: (torch.qint8, torch.per_tensor_symmetric, torch.per_channel_symmetric)}


def batches(seed=0, shape=(6, 40)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) * 3 + 0.5 for _ in range(3)]


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor")  # the oracle's own deprecation notice
@pytest.mark.parametrize("symmetric", [False, True])
def test_per_tensor_min_max_equals_torch_ao(symmetric):
    dtype, scheme, _ = SCHEMES[symmetric]
    ours, theirs = MinMaxObserver(symmetric=symmetric), TorchMinMax(dtype=dtype, qscheme=scheme)
    for x in batches():
        ours.observe(x)
        theirs(x)
    p = ours.qparams()
    scale, zero_point = theirs.calculate_qparams()
    torch.testing.assert_close(p.scale, scale.reshape(()), atol=0, rtol=1e-6)
    assert int(p.zero_point) == int(zero_point) - (128 if symmetric and dtype == torch.quint8 else 0)
    x = batches(seed=1)[0] * 1.5  # values beyond the calibrated range are clamped
    torch.testing.assert_close(fake_quantize(x, p), torch.fake_quantize_per_tensor_affine(
        x, float(scale), int(zero_point), p.q_min, p.q_max), atol=1e-6, rtol=0)
    q = torch.quantize_per_tensor(x, float(scale), int(zero_point), dtype).int_repr().long()
    assert torch.equal(quantize(x, p), q)


@pytest.mark.parametrize("symmetric", [False, True])
def test_per_channel_min_max_equals_torch_ao(symmetric):
    dtype, _, scheme = SCHEMES[symmetric]
    ours, theirs = MinMaxObserver(symmetric=symmetric, axis=0), TorchPerChannel(ch_axis=0, dtype=dtype, qscheme=scheme)
    for x in batches():
        ours.observe(x)
        theirs(x)
    p = ours.qparams()
    scale, zero_point = theirs.calculate_qparams()
    torch.testing.assert_close(p.scale, scale, atol=0, rtol=1e-6)
    assert torch.equal(p.zero_point, zero_point.long())
    x = batches(seed=2)[0]
    torch.testing.assert_close(fake_quantize(x, p), torch.fake_quantize_per_channel_affine(
        x, scale, zero_point.int(), 0, p.q_min, p.q_max), atol=1e-6, rtol=0)


def test_the_round_trip_error_is_at_most_half_a_step_inside_the_range():
    x = torch.linspace(-2.0, 5.0, 1001)
    p = qparams_from_range(x.min(), x.max(), bits=8)
    err = (dequantize(quantize(x, p), p) - x).abs()
    assert float(err.max()) <= float(p.scale) / 2 + 1e-6
    assert float(fake_quantize(torch.zeros(3), p).abs().max()) == 0.0  # zero is on the grid exactly
    p4 = qparams_from_range(x.min(), x.max(), bits=4)
    assert p4.bits == 4 and float((fake_quantize(x, p4) - x).abs().max()) > float(err.max())


def long_tail(seed=0, n=20000):
    """A Gaussian bulk with a few outliers 50x its spread (an activation's long tail)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g)
    x[:5] = torch.tensor([50.0, -45.0, 60.0, 40.0, -55.0])
    return x


def errors(x, observers):
    """Mean squared fake-quantization error, over all values and over the bulk (|x| < 3), per observer."""
    out = {}
    for name, obs in observers.items():
        obs.observe(x)
        e = (fake_quantize(x, obs.qparams()) - x).pow(2)
        out[name] = (float(e.mean()), float(e[x.abs() < 3].mean()))
    return out


def test_percentile_buys_resolution_on_the_bulk_by_clipping_the_tail():
    x = long_tail()
    e = errors(x, {"minmax": MinMaxObserver(), "percentile": PercentileObserver(99.9), "mse": MSEObserver()})
    assert e["percentile"][1] < e["minmax"][1] / 100  # the bulk: 60x finer steps
    assert e["percentile"][0] > e["minmax"][0]  # the clipped outliers cost more than that in all
    assert e["mse"][0] <= e["minmax"][0]  # the full range is one of MSE's candidates
    pct = PercentileObserver(99.9, symmetric=True)
    pct.observe(x)
    torch.testing.assert_close(pct.range()[1][0], torch.quantile(x.abs(), 0.999))


def test_at_4_bits_mse_clips_the_tail_and_has_the_least_error():
    x = long_tail()
    e = errors(x, {"minmax": MinMaxObserver(bits=4), "percentile": PercentileObserver(99.9, bits=4),
                   "mse": MSEObserver(bits=4)})
    assert e["mse"][0] < min(e["minmax"][0], e["percentile"][0]), e
    obs = MSEObserver(bits=4)
    obs.observe(x)
    assert float(obs.range()[1][0]) < 0.5 * float(x.max())


def test_mse_picks_the_candidate_with_the_least_error_per_channel():
    obs = MSEObserver(candidates=20, bits=4, axis=0)
    obs.observe(torch.stack([long_tail(1, 4000), torch.randn(4000)]))
    fractions, errs = obs.errors()
    lo, hi = obs.range()
    best = errs.argmin(dim=1)
    values = obs.values
    for c in range(2):
        absmax = float(values[c].abs().max()) if obs.symmetric else float(values[c].max())
        assert float(hi[c]) == pytest.approx(float(fractions[best[c]]) * absmax)
    assert best[0] != best[1]  # each channel its own clipping


def test_bad_input_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="nothing observed"):
        MinMaxObserver().qparams()
    with pytest.raises(ValueError, match="empty tensor"):
        MinMaxObserver().observe(torch.empty(0))
    with pytest.raises(ValueError, match="NaN or inf"):
        MSEObserver().observe(torch.tensor([1.0, float("nan")]))
    obs = MinMaxObserver(axis=0)
    obs.observe(torch.randn(4, 3))
    with pytest.raises(ValueError, match="3 channels, earlier tensors had 4"):
        obs.observe(torch.randn(3, 3))
    with pytest.raises(ValueError, match="bits"):
        qparams_from_range(torch.tensor(-1.0), torch.tensor(1.0), bits=1)
    with pytest.raises(ValueError, match="percentile"):
        PercentileObserver(40)


def onnxruntime_threshold(x, method, bins, quantized_bins=128, percentile=99.99, symmetric=True):
    """onnxruntime.quantization's entropy or percentile calibration (its HistogramCollector) on the same values."""
    import contextlib
    import io

    from onnxruntime.quantization.calibrate import HistogramCollector

    collector = HistogramCollector(method, symmetric, bins, quantized_bins, percentile, "same")
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its progress
        collector.collect({"t": x.numpy()})
        lo, hi = collector.compute_collection_result()["t"][:2]
    return float(lo), float(hi)


def onnxruntime_entropy_threshold(x, bins, quantized_bins):
    return onnxruntime_threshold(x, "entropy", bins, quantized_bins)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("kind, percentile", [("gauss", 99.9), ("student-t", 99.99), ("relu", 99.9)])
def test_percentile_threshold_equals_onnxruntime_percentile_calibration(kind, percentile, symmetric):
    """Oracle: onnxruntime's PercentileCalibrater (2,048-bin histogram; p% of the values inside the range,
    half the rest cut from each tail; the range then clamped to the values' [min, max]), within one of its
    bins; ours takes exact quantiles of every value (10^6: enough for tails of 50 values and more, where
    a sample quantile is not free to fall anywhere between sparse neighbours)."""
    g, n = torch.Generator().manual_seed(5), 1_000_000
    x = {"gauss": torch.randn(n, generator=g),
         "student-t": torch.randn(n, generator=g) / torch.rand(n, generator=g).clamp(min=0.02),
         "relu": torch.relu(torch.randn(n, generator=g) * 2 + 0.3)}[kind]
    bins = 2048
    lo, hi = onnxruntime_threshold(x, "percentile", bins, percentile=percentile, symmetric=symmetric)
    obs = PercentileObserver(percentile, symmetric=symmetric)
    obs.observe(x)
    ours_lo, ours_hi = (min(max(float(t[0]), float(x.min())), float(x.max())) for t in obs.range())
    a = x.abs()
    width = float(a.max() - a.min()) / bins if symmetric else 2 * float(a.max()) / bins
    for ours, theirs in ((ours_lo, lo), (ours_hi, hi)):
        assert abs(ours - theirs) <= width + 1e-6, (ours, theirs, width)
    assert ours_hi < float(x.max())  # a tail is clipped


@pytest.mark.parametrize("kind, bins", [("gauss", 512), ("student-t", 1024), ("relu", 512)])
def test_kl_threshold_equals_onnxruntime_entropy_calibration(kind, bins):
    """Oracle: onnxruntime's EntropyCalibrater algorithm, within one histogram bin (with its integer Q)."""
    g = torch.Generator().manual_seed(3)
    x = {"gauss": torch.randn(20000, generator=g),
         "student-t": torch.randn(20000, generator=g) / torch.rand(20000, generator=g).clamp(min=0.05),
         "relu": torch.relu(torch.randn(20000, generator=g) * 2 + 0.3)}[kind]
    lo, hi = onnxruntime_entropy_threshold(x, bins, 128)
    obs = KLObserver(bins, 128, onnxruntime_compatible=True)
    obs.observe(x)
    ours = obs.range()
    width = 2 * float(x.abs().max()) / bins
    assert abs(float(ours[1][0]) - hi) <= width + 1e-6 and abs(float(ours[0][0]) - lo) <= width + 1e-6
    if kind == "student-t":
        assert float(ours[1][0]) < float(x.abs().max())  # a heavy tail is clipped


def test_kl_picks_the_window_of_least_divergence_and_clips_a_long_tail():
    x = long_tail()
    obs = KLObserver(512, 128)
    obs.observe(x)
    windows, kls = obs.divergences(obs.values[0])
    lo, hi = obs.range()
    assert windows[int(kls.argmin())][1] == pytest.approx(float(hi[0]))
    assert float(hi[0]) < 0.5 * float(x.max())  # the outliers are outside the chosen range
    e = errors(x, {"minmax": MinMaxObserver(bits=8, symmetric=True), "kl": KLObserver(512, 128)})
    assert e["kl"][1] < e["minmax"][1]  # finer steps on the bulk
