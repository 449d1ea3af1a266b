"""FreSh: the spectrum and distance definitions, and selection on signals of known bandwidth."""

from __future__ import annotations

import math

import pytest
import torch

import nfields.encodings.fresh as fresh
from nfields.encodings.fresh import fresh_select, grid_coords, spectrum_1d, wasserstein_1d
from nfields.errors import NFieldsError
from nfields.registry import build_network

SIGMAS = [0.25, 0.5, 1, 2, 4, 8, 16, 32]


def bandlimited(n: int, cutoff: float, seed: int = 0) -> torch.Tensor:
    """(n, n, 1) zero-mean noise whose DFT is flat inside the disc |k| <= cutoff (cycles per image), zero outside."""
    g = torch.Generator().manual_seed(seed)
    k = torch.fft.fftfreq(n) * n
    r = (k[:, None] ** 2 + k[None, :] ** 2).sqrt()
    spec = torch.complex(torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)) * (r <= cutoff) * (r > 0)
    img = torch.fft.ifft2(spec).real
    return (img / img.std())[..., None]


def build_fourier(sigma: float):
    return build_network("mlp", 2, 1, encoding="fourier", sigma=sigma, n_fourier=64, hidden=64, layers=2)


def test_spectrum_bins_are_anti_diagonals():
    n = 32
    yy, xx = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    # cos at (kx, ky) = (3, 5): all its magnitude sits on anti-diagonal 3 + 5 = 8 (plus its mirror, outside the
    # non-negative quadrant); a constant offset (DC) is ignored.
    img = (torch.cos(2 * math.pi * (3 * xx + 5 * yy) / n) + 7.0)[..., None].repeat(1, 1, 3)
    s = spectrum_1d(img, n_bins=20)
    assert s.shape == (20,) and s.sum().item() == pytest.approx(1.0)
    assert s[8].item() == pytest.approx(1.0, abs=1e-4) and s[0] == 0
    vol = torch.cos(2 * math.pi * (torch.arange(16) * 2 / 16))[:, None, None, None].expand(16, 16, 16, 1)
    assert spectrum_1d(vol, 8).argmax().item() == 2
    with pytest.raises(NFieldsError, match="constant"):
        spectrum_1d(torch.ones(8, 8, 3))
    with pytest.raises(NFieldsError, match="expected"):
        spectrum_1d(torch.ones(8, 8))


def test_wasserstein_moves_mass():
    p, q = torch.zeros(10), torch.zeros(10)
    p[3], q[7] = 1.0, 1.0
    assert wasserstein_1d(p, q) == pytest.approx(4.0)
    assert wasserstein_1d(p, p) == 0.0
    q = torch.zeros(10)
    q[2], q[4] = 0.5, 0.5
    assert wasserstein_1d(p, q) == pytest.approx(1.0)


def test_grid_coords_order():
    c = grid_coords((2, 4))
    assert c.shape == (8, 2)
    # Row-major over (H, W): x (along W) varies fastest.
    torch.testing.assert_close(c[:4, 0], torch.tensor([-0.75, -0.25, 0.25, 0.75]))
    torch.testing.assert_close(c[:, 1], torch.tensor([-0.5] * 4 + [0.5] * 4))


def picks_for(cutoffs: list[float]) -> list[float]:
    return [fresh_select(bandlimited(128, fc), "fourier", SIGMAS, build_fourier).best for fc in cutoffs]


def test_fresh_sigma_grows_with_bandwidth():
    # Known bandwidths from smooth to busy; the untrained Fourier MLP's spectrum widens with sigma, so the chosen
    # sigma must grow strictly. Measured picks: 0.25, 4, 16. Without normalising the spectra (W1 then compares
    # total magnitudes, not shapes) every cutoff picks 8 and this fails (checked in the next test).
    picks = picks_for([8, 32, 64])
    assert picks[0] < picks[1] < picks[2], picks
    assert picks[0] <= 1 and picks[2] >= 8, picks
    res = fresh_select(bandlimited(128, 32), "fourier", SIGMAS, build_fourier)
    assert res.option == "sigma" and len(res.distances) == len(SIGMAS)
    assert res.distances[SIGMAS.index(res.best)] == min(res.distances)


def test_a_broken_spectrum_fails_the_bandwidth_check(monkeypatch):
    right = fresh.spectrum_1d

    def unnormalised(signal, n_bins=128):
        x = torch.as_tensor(signal, dtype=torch.float64)
        return right(x, n_bins) * torch.fft.fftn(x, dim=(0, 1)).abs().sum() / x.numel()

    monkeypatch.setattr(fresh, "spectrum_1d", unnormalised)
    picks = picks_for([8, 32, 64])
    assert not (picks[0] < picks[1] < picks[2]), picks


def test_fresh_select_errors_and_seeded_builds():
    tgt = bandlimited(32, 8)
    with pytest.raises(NFieldsError, match="family"):
        fresh_select(tgt, "wavelet", [1.0], build_fourier)
    with pytest.raises(NFieldsError, match="coordinates"):
        fresh_select(tgt, "fourier", [1.0], build_fourier, coords=torch.zeros(10, 2))
    seeds = []

    def build(sigma, seed):
        seeds.append(seed)
        return build_network("mlp", 2, 1, encoding="fourier", sigma=sigma, n_fourier=16, hidden=16, layers=1, seed=seed)

    res = fresh_select(tgt, "siren", [1.0, 2.0], build, n_init=3)
    assert seeds == [0, 1, 2, 0, 1, 2] and res.option == "omega_0"
    # The selection times itself (the cost the FreSh benchmark reports) and says so in its summary.
    assert 0 < res.seconds < 60 and res.summary().endswith(f"selection: {res.seconds:.1f} s")


def test_fresh_on_a_strided_grid_picks_the_same():
    """Comparing on every 2nd sample per axis (4x fewer model evaluations) keeps every bin below the sampling limit
    when the short side is >= 2 * n_bins: the pick on a 256^2 signal with 64 bins is the same as on the full grid."""
    img = bandlimited(256, 32)
    calls = []

    def counted(sigma):
        net = build_fourier(sigma)
        net.register_forward_hook(lambda m, inp, out: calls.append(len(inp[0])))
        return net

    full = fresh_select(img, "fourier", SIGMAS, counted, n_bins=64, stride=1)
    n_full, calls[:] = sum(calls), []
    auto = fresh_select(img, "fourier", SIGMAS, counted, n_bins=64)  # default stride: 256 // 128 = 2
    assert auto.best == full.best
    assert sum(calls) * 4 == n_full
    with pytest.raises(NFieldsError, match="stride"):
        fresh_select(img, "fourier", SIGMAS, build_fourier, stride=0)
