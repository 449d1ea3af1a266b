"""Fit a network to one image: coordinates in (-1, 1)^2 (pixel centres, x along the width) -> colour.

Protocols: ``full`` trains and tests on every pixel; ``every_other`` (the CAM paper's) trains on the pixels with
even row and column (1/4 of them) and tests on all pixels, so the test PSNR measures interpolation.

    >>> r = fit_image(torch.rand(16, 16, 3), "mlp", {"hidden": 32, "layers": 2}, steps=10)
    >>> r.steps
    10
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from nfields.data.images import read_image
from nfields.encodings.fresh import FAMILIES, FreshResult, fresh_select, grid_coords
from nfields.errors import NFieldsError
from nfields.fields.base import count_parameters, param_groups
from nfields.registry import build_network, network_config
from nfields.tasks import PeakMemory, Stopwatch, parse_options, pick_device

PROTOCOLS = ("full", "every_other")


@dataclass
class FitResult:
    """Outcome of :func:`fit_image`.

    psnr: test PSNR (dB) on all pixels; psnr_train: PSNR on the training pixels; seconds: training time (evaluation
    excluded); steps: optimizer steps taken; params: trainable scalars; peak_mem_mb: peak memory (CUDA allocated,
    or process RSS on a CPU); history: dicts ``{step, seconds, psnr_train[, psnr]}``; options: the backend options
    used (after FreSh); fresh: the FreSh selection, when asked for.
    """

    psnr: float
    psnr_train: float
    seconds: float
    steps: int
    params: int
    peak_mem_mb: float
    history: list[dict]
    options: dict = dataclasses.field(default_factory=dict)
    fresh: FreshResult | None = None

    def summary(self) -> str:
        """One line for the terminal."""
        return (
            f"psnr {self.psnr:.2f} dB (train {self.psnr_train:.2f}) | {self.steps} steps in {self.seconds:.1f} s | "
            f"{self.params:,} params | peak mem {self.peak_mem_mb:.0f} MB"
        )


def load_image(image: str | Path | Tensor | np.ndarray) -> Tensor:
    """An image path or array -> (H, W, C) float32 in [0, 1] with C = 1 or 3 (alpha dropped)."""
    if isinstance(image, (str, Path)):
        arr = torch.from_numpy(np.array(read_image(Path(image))))  # a writable copy
    else:
        arr = torch.as_tensor(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 2, 3, 4) or min(arr.shape[:2]) < 2:
        raise NFieldsError(f"fit-image: expected an (H, W, C) image with H, W >= 2 and C <= 4, got {tuple(arr.shape)}")
    img = arr.float() / 255.0 if arr.dtype == torch.uint8 else arr.float()
    img = img[..., :3] if img.shape[-1] >= 3 else img[..., :1]
    if not torch.isfinite(img).all():
        raise NFieldsError("fit-image: the image has non-finite values")
    return img.contiguous()


def _psnr(mse: float) -> float:
    return float("inf") if mse <= 0 else -10.0 * math.log10(mse)


@torch.no_grad()
def _eval_mse(net, coords: Tensor, target: Tensor, chunk: int = 1 << 17) -> float:
    """Mean squared error of the clamped prediction, in chunks."""
    sse = 0.0
    for i in range(0, len(coords), chunk):
        pred = net(coords[i : i + chunk]).clamp(0.0, 1.0)
        sse += float(((pred - target[i : i + chunk]) ** 2).sum())
    return sse / target.numel()


def fresh_family(network: str, options: dict) -> str:
    """The FreSh family a backend's options belong to (fourier / siren / positional / hashgrid)."""
    if network == "siren":
        return "siren"
    if network == "hashgrid":
        return "hashgrid"
    if network in ("mlp", "cam"):
        enc = options.get("encoding", network_config(network).encoding)
        if enc in ("fourier", "positional"):
            return enc
    raise NFieldsError(f"--fresh: not available for --field {network} (mlp/cam with an encoding, siren, hashgrid)")


def fit_image(
    image: str | Path | Tensor | np.ndarray,
    network: str,
    options: dict | None = None,
    steps: int = 2000,
    lr: float = 1e-3,
    batch: int | None = None,
    protocol: str = "full",
    time_budget_s: float | None = None,
    fresh: bool = False,
    seed: int = 0,
    eval_at_s: list[float] | None = None,
    device: str | None = None,
    fresh_candidates: list[float] | None = None,
    lr_milestones: tuple[float, ...] = (),
    lr_final: float = 1.0,
) -> FitResult:
    """Fit ``network`` (a registered backend with ``options``) to an image with Adam and MSE.

    image: path, or (H, W[, C]) uint8/float tensor; steps: maximum optimizer steps; lr: base learning rate
    (backends' ``param_groups`` may scale it); batch: random pixels per step (None: all training pixels);
    protocol: ``full`` or ``every_other``; time_budget_s: stop after this much training time; fresh: choose the
    backend's embedding scale (sigma / omega_0 / n_freqs / finest_res) with FreSh first; seed: weight init and
    batch order; eval_at_s: training times at which to also record the test PSNR in ``history``; lr_milestones:
    fractions of ``steps`` at which every learning rate drops 10x (the CAM paper's image protocol: (0.5, 0.75));
    lr_final: every learning rate decays exponentially to this fraction of its start by the end of the run (the
    larger of step / steps and time / time_budget_s; 1 = constant -- at high PSNR a constant rate can blow up late).
    """
    if protocol not in PROTOCOLS:
        raise NFieldsError(f"--protocol {protocol!r}: must be one of {', '.join(PROTOCOLS)}")
    if steps < 1 and time_budget_s is None:
        raise NFieldsError(f"--steps {steps}: must be >= 1")
    if batch is not None and batch < 1:
        raise NFieldsError(f"--batch {batch}: must be >= 1")
    if lr_milestones and (steps < 1 or not all(0.0 < m < 1.0 for m in lr_milestones)):
        raise NFieldsError(f"lr milestones {tuple(lr_milestones)}: need a step count and fractions in (0, 1)")
    if not 0.0 < lr_final <= 1.0 or (lr_final < 1.0 and lr_milestones):
        raise NFieldsError(f"lr final {lr_final}: must be in (0, 1] (1 = a constant rate), and 1 with lr milestones")
    dev = pick_device(device)
    img = load_image(image)
    h, w, c = img.shape
    coords = grid_coords((h, w))
    target = img.reshape(-1, c)
    if protocol == "every_other":
        train_img = img[::2, ::2]
        train_coords = coords.reshape(h, w, 2)[::2, ::2].reshape(-1, 2)
    else:
        train_img, train_coords = img, coords
    train_target = train_img.reshape(-1, c)
    options = dict(options or {})
    cfg_fields = {f.name for f in dataclasses.fields(type(network_config(network)))}
    if "seed" in cfg_fields and "seed" not in options:
        options["seed"] = seed
    network_config(network, **options)  # unknown names/options fail here, before any FreSh work

    fresh_result = None
    if fresh:
        family = fresh_family(network, options)
        key = FAMILIES[family]["option"]
        fresh_result = fresh_select(
            train_img,
            family,
            fresh_candidates,
            lambda v: build_network(network, 2, c, **{**options, key: v}),
            coords=train_coords,
        )
        options[key] = fresh_result.best

    torch.manual_seed(seed)
    net = build_network(network, 2, c, **options).to(dev)
    opt = torch.optim.Adam(param_groups(net, lr), lr=lr)
    clock = Stopwatch()
    milestones = [round(m * steps) for m in lr_milestones]
    max_steps = steps if steps >= 1 else 1 << 62

    def lr_factor(step: int) -> float:
        """0.1 per milestone passed, times lr_final ** (the run's progress: steps or time, whichever is further)."""
        progress = step / max_steps
        if time_budget_s:
            progress = max(progress, clock.elapsed() / time_budget_s)
        return 0.1 ** sum(step >= m for m in milestones) * lr_final ** min(progress, 1.0)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    coords, target = coords.to(dev), target.to(dev)
    train_coords, train_target = train_coords.to(dev), train_target.to(dev)
    gen = torch.Generator(device=dev).manual_seed(seed)
    mem = PeakMemory(dev)
    history: list[dict] = []
    pending = sorted(eval_at_s or [])
    step = 0
    last_train = float("nan")
    log_every = max(1, max_steps // 100) if max_steps < 1 << 62 else 50
    net.train()
    while step < max_steps:
        if time_budget_s is not None and clock.elapsed() >= time_budget_s:
            break
        clock.start()
        if batch is None or batch >= len(train_coords):
            xb, yb = train_coords, train_target
        else:
            idx = torch.randint(0, len(train_coords), (batch,), device=dev, generator=gen)
            xb, yb = train_coords[idx], train_target[idx]
        loss = torch.nn.functional.mse_loss(net(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        clock.stop()
        last_train = float(loss.detach())
        if step % log_every == 0 or step == 1:
            mem.sample()
            history.append({"step": step, "seconds": clock.elapsed(), "psnr_train": _psnr(last_train)})
        while pending and clock.elapsed() >= pending[0]:
            pending.pop(0)
            history.append(
                {
                    "step": step,
                    "seconds": clock.elapsed(),
                    "psnr_train": _psnr(last_train),
                    "psnr": _psnr(_eval_mse(net, coords, target)),
                }
            )
    net.eval()
    psnr = _psnr(_eval_mse(net, coords, target))
    psnr_train = _psnr(_eval_mse(net, train_coords, train_target))
    history.append({"step": step, "seconds": clock.elapsed(), "psnr_train": psnr_train, "psnr": psnr})
    return FitResult(
        psnr=psnr,
        psnr_train=psnr_train,
        seconds=clock.elapsed(),
        steps=step,
        params=count_parameters(net),
        peak_mem_mb=mem.mb(),
        history=history,
        options=options,
        fresh=fresh_result,
    )


@dataclass
class FitImage:
    """Fit a neural field to one image and report PSNR, time, parameters and memory."""

    image: Path
    """Image file (PNG, JPEG, ...)."""
    field: str = "mlp"
    """Network backend (see `nfields fields`)."""
    set: list[str] = dataclasses.field(default_factory=list)
    """Backend options as option=value, e.g. --set hidden=128 encoding=fourier."""
    steps: int = 2000
    """Maximum optimizer steps."""
    lr: float = 1e-3
    """Base learning rate (grids may scale it, e.g. CAM's grid_lr_mult)."""
    batch: int | None = None
    """Random pixels per step; default: all training pixels (full batch)."""
    protocol: Literal["full", "every_other"] = "full"
    """full: train and test on all pixels; every_other: train on even rows/columns, test on all (CAM protocol)."""
    time_budget: float | None = None
    """Stop after this many seconds of training."""
    fresh: bool = False
    """Choose the embedding scale (sigma, omega_0, n_freqs or finest_res) with FreSh before training."""
    seed: int = 0
    """Seed of the initialisation and the batches."""

    def main(self) -> FitResult:
        """Run the fit and print the summary (and the FreSh candidates with --fresh)."""
        return main(self)


def main(opts: FitImage) -> FitResult:
    """Run :func:`fit_image` from CLI options; prints FreSh's table (with --fresh) and a one-line summary."""
    result = fit_image(
        opts.image,
        opts.field,
        parse_options(opts.set),
        steps=opts.steps,
        lr=opts.lr,
        batch=opts.batch,
        protocol=opts.protocol,
        time_budget_s=opts.time_budget,
        fresh=opts.fresh,
        seed=opts.seed,
    )
    if result.fresh is not None:
        print(f"FreSh ({result.fresh.family}): {result.fresh.option} = {result.fresh.best:g}")
        print(result.fresh.summary())
    print(f"{opts.image} --field {opts.field}: {result.summary()}")
    return result
