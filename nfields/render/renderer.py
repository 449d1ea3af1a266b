"""The volume renderer: occupancy-grid marching + packed compositing for density and SDF (NeuS) fields.

It knows only the Field protocol (``kind``, ``geometry``, ``color``, ``density``, ``aabb``; SDF fields add
``inv_s()`` and optionally ``cos_anneal_ratio`` and ``geometry_and_gradient``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from nfields.fields.base import Field
from nfields.render.sampler import OccupancyGrid, march_rays
from nfields.render.volume import (
    accumulate_along_rays,
    neus_alpha,
    render_weight_from_alpha,
    render_weight_from_density,
)
from nfields.types import Rays, RenderOutput


@dataclass
class RenderConfig:
    """How rays are marched and composited."""

    n_steps: int = 512
    """Steps across the aabb diagonal: step_size = diagonal / n_steps (when step_size is None)."""
    step_size: float | None = None
    """Marching step in world units; overrides n_steps."""
    cone_angle: float = 0.0
    """> 0 grows the step with distance: clamp(t * cone_angle, step_size) (unbounded scenes; 1/256 is common)."""
    grid_resolution: int = 128
    """Occupancy grid cells per axis."""
    grid_update_every: int = 16
    """Update the occupancy grid every this many training steps."""
    grid_warmup: int = 256
    """Before this step every cell is re-evaluated at each update; afterwards a random quarter + occupied ones."""
    occ_thre: float = 0.01
    """A cell is empty when density * step_size stays below min(occ_thre, mean over cells)."""
    use_grid: bool = True
    """Skip empty space with the occupancy grid (False: uniform marching through the whole aabb)."""
    chunk: int = 8192
    """Rays per chunk when rendering whole images (memory bound)."""
    stratified: bool = True
    """Jitter sample positions in training (never in eval)."""
    color_weight_thre: float = 1e-4
    """SDF fields: samples whose weight is below this are not coloured (0 = colour every sample)."""
    sdf_cull_transmittance: float = 1e-3
    """SDF fields: a cheap SDF-only pass first estimates each sample's transmittance; samples behind the point
    where it falls below this (inside or behind the first surface) are dropped before the costly pass with
    gradients and colour (0 = keep every sample)."""
    sdf_cull_first: int = 20
    """SDF fields: the cull pass evaluates each ray's first this-many samples, then the rest only on the rays still
    transparent after them (the back of the object is rarely needed); the same samples are kept as in one pass
    (0 = every sample in one pass)."""


class Renderer(nn.Module):
    """Render a :class:`~nfields.fields.base.Field` along rays.

    Density fields: ``sigma`` from ``field.geometry``; weights ``T (1 - exp(-sigma dt))``.
    SDF fields (``field.kind == "sdf"``): the SDF gradient at every sample (``field.geometry_and_gradient`` when the
    field has it, else ``torch.autograd.grad``, with ``create_graph`` in training so the Eikonal loss and the normals
    train the field), then NeuS's unbiased alpha; normals are the normalised gradients, composited.

    The occupancy grid (``self.grid``, over ``field.aabb``) is part of the state_dict.

    Example:
        >>> class Ball(Field):
        ...     def geometry(self, x):
        ...         return 10.0 * (x.norm(dim=-1) < 0.5).float(), x
        ...     def color(self, f, d, n=None):
        ...         return torch.ones_like(f)
        >>> r = Renderer(Ball([-1, -1, -1, 1, 1, 1]), RenderConfig(n_steps=64, stratified=False))
        >>> out = r(Rays(torch.tensor([[0.0, 0, -2]]), torch.tensor([[0.0, 0, 1]])))
        >>> round(out.opacity.item(), 3), round(out.depth.item(), 2)
        (1.0, 1.62)
    """

    def __init__(self, field: Field, cfg: RenderConfig | None = None, near: float = 0.0, far: float = 1e10):
        super().__init__()
        self.field = field
        self.cfg = cfg or RenderConfig()
        self.near, self.far = float(near), float(far)
        self.grid = OccupancyGrid(field.aabb.detach().clone(), self.cfg.grid_resolution)

    @property
    def step_size(self) -> float:
        """Marching step in world units."""
        if self.cfg.step_size is not None:
            return float(self.cfg.step_size)
        aabb = self.field.aabb
        return float((aabb[3:] - aabb[:3]).norm()) / self.cfg.n_steps

    @torch.no_grad()
    def update_grid(self, step: int) -> None:
        """Refresh the occupancy grid every ``cfg.grid_update_every`` steps (no-op otherwise or with use_grid off).

        The grid stores ``field.density(x) * step_size`` (the opacity of one step), the quantity nerfacc's
        examples threshold with ``occ_thre``. SDF fields with a ``shell_width`` get an exact shell instead
        (:meth:`~nfields.render.sampler.OccupancyGrid.update_from_sdf`).
        """
        if not self.cfg.use_grid or step % self.cfg.grid_update_every != 0:
            return
        step_size = self.step_size
        if callable(getattr(self.field, "update_shadows", None)):
            self.field.update_shadows()  # the shadow rays' copy of the SDF follows the surface with the grid
        if self.field.kind == "sdf" and callable(getattr(self.field, "shell_width", None)):
            # SDF fields: the cells within the visible shell, tested exactly at cell centres (no EMA lag, so the
            # grid tightens as the surface sharpens).
            self.grid.update_from_sdf(self.field.sdf, self.field.shell_width(step_size))
            return
        self.grid.update(
            step,
            lambda x: self.field.density(x) * step_size,
            occ_thre=self.cfg.occ_thre,
            warmup_steps=self.cfg.grid_warmup,
        )

    def _sdf_and_gradient(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        create_graph = self.training and torch.is_grad_enabled()
        own = getattr(self.field, "geometry_and_gradient", None)
        if callable(own):
            return own(x, create_graph=create_graph)
        grad_was_on = torch.is_grad_enabled()
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            sdf, feat = self.field.geometry(xg)
            (grad,) = torch.autograd.grad(sdf.sum(), xg, create_graph=create_graph)
        if not grad_was_on:
            # Rendering without grad: drop the graph built only to get the gradient.
            sdf, feat, grad = sdf.detach(), feat.detach(), grad.detach()
        return sdf, feat, grad

    def forward(self, rays: Rays, background: Tensor | None = None) -> RenderOutput:
        """Render N rays.

        Args:
            rays: origins (N, 3), unit directions (N, 3).
            background: (3,) or (N, 3) colour in [0, 1] composited as ``rgb + (1 - opacity) * bg``; None = black.

        Returns:
            :class:`~nfields.types.RenderOutput` with rgb (N, 3), depth (N,) (expected t over the hit part,
            ``sum(w t) / opacity``; 0 where nothing was hit), opacity (N,), normals (N, 3) for SDF fields
            (``sum(w n)``, not renormalised) else None, n_samples, and extras ``weights``, ``ray_indices``,
            ``t_starts``, ``t_ends`` (S,) — plus ``sdf`` (S,) and ``sdf_grad`` (S, 3) for SDF fields.
        """
        origins, dirs = rays.origins, rays.directions
        n = origins.shape[0]
        cfg = self.cfg
        samples = march_rays(
            origins,
            dirs,
            self.near,
            self.far,
            self.step_size,
            self.grid if cfg.use_grid else None,
            self.field.aabb,
            cone_angle=cfg.cone_angle,
            stratified=cfg.stratified and self.training,
        )
        ri, t0, t1 = samples.ray_indices, samples.t_starts, samples.t_ends
        t_mid = (t0 + t1) * 0.5
        d = dirs[ri]
        x = origins[ri] + d * t_mid[:, None]
        n_marched = len(samples)
        if self.field.kind == "sdf" and cfg.sdf_cull_transmittance > 0 and n_marched > 0:
            keep = self._visible(x, d, ri, t0, t1, t_mid, n)
            if len(keep) < n_marched:
                ri, t0, t1, t_mid, d, x = ri[keep], t0[keep], t1[keep], t_mid[keep], d[keep], x[keep]
        extras: dict[str, Tensor] = {}
        normals_out = None
        if self.field.kind == "sdf":
            sdf, feat, grad = self._sdf_and_gradient(x)
            normals = grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            anneal = float(getattr(self.field, "cos_anneal_ratio", 1.0))
            alphas = neus_alpha(sdf, grad, d, t1 - t0, self.field.inv_s(), anneal)
            weights, _ = render_weight_from_alpha(alphas, ri, n)
            # Colour only where it can show: weights are known before colour for SDF fields, and shading (a PBR
            # field's split-sum lookups) is the costly part of a sample. Skipped samples change a pixel by at most
            # their summed weight (each < color_weight_thre).
            keep = torch.nonzero(weights.detach() > cfg.color_weight_thre).squeeze(-1)
            # Opacity, depth and normals do not depend on colour: composited once, here, and reused by shadows.
            opacity = accumulate_along_rays(weights, None, ri, n).squeeze(-1)
            depth = accumulate_along_rays(weights, t_mid[:, None], ri, n).squeeze(-1) / (opacity + 1e-10)
            normals_out = accumulate_along_rays(weights, normals, ri, n)
            kw = {}
            if getattr(self.field, "wants_shadows", lambda: False)():
                kw["visibility"] = self._shadow_visibility(opacity, depth, normals_out, ri, origins, dirs)
            if getattr(self.field, "wants_points", lambda: False)():
                kw["points"] = x
            if len(keep) == len(weights):
                rgb_s = self.field.color(feat, d, normals, **kw)
            else:
                kw = {k: v[keep] for k, v in kw.items()}
                shaded = self.field.color(feat[keep], d[keep], normals[keep], **kw)
                rgb_s = shaded.new_zeros(len(weights), shaded.shape[-1]).index_copy(0, keep, shaded)
            extras["sdf"] = sdf
            extras["sdf_grad"] = grad
        else:
            sigmas, feat = self.field.geometry(x)
            rgb_s = self.field.color(feat, d, None)
            weights, _, _ = render_weight_from_density(t0, t1, sigmas, ri, n)
            opacity = accumulate_along_rays(weights, None, ri, n).squeeze(-1)
            depth = accumulate_along_rays(weights, t_mid[:, None], ri, n).squeeze(-1) / (opacity + 1e-10)
        rgb = accumulate_along_rays(weights, rgb_s, ri, n)
        if background is not None:
            rgb = rgb + (1.0 - opacity)[:, None] * background.to(rgb).expand(n, 3)
        extras.update(weights=weights, ray_indices=ri, t_starts=t0, t_ends=t1)
        extras["n_marched"] = torch.tensor(n_marched)  # samples before the SDF cull (== n_samples otherwise)
        return RenderOutput(rgb, depth, opacity, normals_out, n_samples=len(ri), extras=extras)

    @torch.no_grad()
    def _shadow_visibility(
        self, opacity: Tensor, depth: Tensor, normals: Tensor, ri: Tensor, origins: Tensor, dirs: Tensor
    ) -> Tensor:
        """Per-sample shadow visibility (S, K) of a shadowed PBR field, traced once per ray from its expected surface
        point (the ray's composited depth and normal; rays with opacity < 0.05 count as unshadowed)."""
        hit = torch.nonzero(opacity > 0.05).squeeze(-1)
        pts = origins[hit] + dirs[hit] * depth[hit, None]
        unit = normals[hit] / normals[hit].norm(dim=-1, keepdim=True).clamp_min(1e-8)
        vis = self.field.shadow_visibility(pts, unit)  # (hits, K): K from the field's shadow casters
        vis_ray = torch.ones(len(opacity), vis.shape[1], device=opacity.device)
        vis_ray[hit] = vis
        return vis_ray[ri]

    @torch.no_grad()
    def _visible(self, x: Tensor, d: Tensor, ri: Tensor, t0: Tensor, t1: Tensor, t_mid: Tensor, n: int) -> Tensor:
        """Indices of the SDF samples whose estimated transmittance is above ``cfg.sdf_cull_transmittance``.

        A forward pass of the SDF alone (no gradient, no colour). NeuS's alpha needs the directional derivative;
        it is estimated from the next sample of the same ray when the two are adjacent (the secant, as NeuS's
        up-sampling does), else taken head-on (-1); clamped to [-1, 0] so surfaces seen from behind add no
        opacity. The estimate ignores the cos annealing, which only adds opacity, so it errs towards keeping.

        In two passes when ``cfg.sdf_cull_first`` > 0: each ray's first samples, then the rest of the rays whose
        transmittance before their last evaluated sample is still above the threshold. Rays that are already opaque
        would drop every later sample anyway (transmittance only falls), so the result equals one pass.
        """
        thr = self.cfg.sdf_cull_transmittance
        first = int(self.cfg.sdf_cull_first)
        s = len(ri)
        far_sdf = 1e3  # unevaluated samples: far outside the surface, opacity 0
        if first <= 1:
            sdf = self.field.geometry(x)[0]
            evaluated = None
        else:
            counts = torch.bincount(ri, minlength=n)
            rank = torch.arange(s, device=ri.device) - (torch.cumsum(counts, 0) - counts)[ri]
            evaluated = rank < first
            sdf = torch.full((s,), far_sdf, device=x.device, dtype=x.dtype)
            idx = torch.nonzero(evaluated).squeeze(-1)
            sdf[idx] = self.field.geometry(x[idx])[0]
            if bool((counts > first).any()):
                trans = self._cull_transmittance(sdf, evaluated, d, ri, t0, t1, t_mid, n)
                # Transmittance before each long ray's sample `first - 1` is exact (its predecessors' secants are).
                at = rank == first - 1
                open_ray = torch.zeros(n, dtype=torch.bool, device=ri.device)
                open_ray[ri[at]] = trans[at] > thr
                rest = torch.nonzero(~evaluated & open_ray[ri]).squeeze(-1)
                if len(rest):
                    sdf[rest] = self.field.geometry(x[rest])[0]
                    evaluated[rest] = True
        trans = self._cull_transmittance(sdf, evaluated, d, ri, t0, t1, t_mid, n)
        return torch.nonzero(trans > thr).squeeze(-1)

    def _cull_transmittance(
        self, sdf: Tensor, evaluated: Tensor | None, d: Tensor, ri: Tensor, t0: Tensor, t1: Tensor, t_mid: Tensor,
        n: int,
    ) -> Tensor:  # fmt: skip
        """Transmittance before each sample (S,) from SDF values at the midpoints (see :meth:`_visible`); a secant
        needs both samples evaluated (``evaluated`` (S,) bool, None = all)."""
        slope = torch.full_like(sdf, -1.0)
        if len(sdf) > 1:
            adjacent = (ri[1:] == ri[:-1]) & ((t0[1:] - t1[:-1]).abs() <= 1e-6 * (1 + t1[:-1].abs()))
            if evaluated is not None:
                adjacent &= evaluated[1:] & evaluated[:-1]
            secant = (sdf[1:] - sdf[:-1]) / (t_mid[1:] - t_mid[:-1]).clamp_min(1e-9)
            slope[:-1] = torch.where(adjacent, secant, slope[:-1])
        slope = slope.clamp(-1.0, 0.0)
        alphas = neus_alpha(sdf, slope[:, None] * d, d, t1 - t0, self.field.inv_s(), 1.0)
        return render_weight_from_alpha(alphas, ri, n)[1]

    @torch.no_grad()
    def render_image(self, cameras, i: int, background: Tensor | None = None, downscale: int = 1) -> dict[str, Tensor]:
        """Render camera ``i`` in chunks of ``cfg.chunk`` rays, in eval mode (no jitter).

        Args:
            cameras: anything with ``image_rays(i, downscale) -> Rays`` (row-major H*W) and ``width``/``height``
                (full resolution; the image is ``height // downscale`` x ``width // downscale``).
            background: (3,) colour or None (black).

        Returns:
            ``{"rgb": (H, W, 3), "depth": (H, W), "opacity": (H, W)}`` plus ``"normals": (H, W, 3)`` for SDF fields.
        """
        rays = cameras.image_rays(i, downscale)
        h, w = cameras.height // downscale, cameras.width // downscale
        was_training = self.training
        self.eval()
        try:
            parts: dict[str, list[Tensor]] = {}
            for a in range(0, len(rays), self.cfg.chunk):
                out = self(rays[a : a + self.cfg.chunk], background)
                got = {"rgb": out.rgb, "depth": out.depth, "opacity": out.opacity}
                if out.normals is not None:
                    got["normals"] = out.normals
                for k, v in got.items():
                    parts.setdefault(k, []).append(v.detach())
        finally:
            self.train(was_training)
        images = {k: torch.cat(v).reshape(h, w, -1) for k, v in parts.items()}
        for k in ("depth", "opacity"):
            images[k] = images[k].squeeze(-1)
        return images
