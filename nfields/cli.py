"""The ``nfields`` command line: one small dataclass per subcommand, each with ``main()``; tyro turns the field
docstrings into ``--help`` text. Every user error (:class:`NFieldsError`) becomes one line and exit code 2."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Annotated, Literal

import tyro

from nfields.errors import NFieldsError


@dataclass
class Train:
    """Train a field on a scene (lego, dtu_scan24, demo, or a folder) and write a run folder under --out."""

    scene: str = "demo"
    """Scene name or path: $NFIELDS_DATA/<name>, ./data/<name>, ../shared/data/<name>; `demo` is built in."""
    field: str | None = None
    """Field backend (mlp, hashgrid, ...; see `nfields fields`). Default: the preset's."""
    preset: Literal["tiny", "cpu", "full"] = "cpu"
    """Size preset: tiny (seconds, for tests), cpu (2 cores, minutes), full (GPU)."""
    name: str | None = None
    """Run name (default <scene>_<field>_<preset>); an existing folder gets a new suffix unless --resume."""
    out: Path = Path("runs")
    """Folder that holds run folders."""
    resume: bool = False
    """Continue the newest run with this name from its last checkpoint."""
    set: list[str] = dataclass_field(default_factory=list)
    """Config overrides, e.g. --set train.steps=2000 model.network_options.levels=12."""
    viewer: bool = True
    """Start the viser web viewer when viser is installed (--no-viewer turns it off)."""
    host: str = "127.0.0.1"
    """Viewer address; 0.0.0.0 exposes it to the network and must be asked for."""
    port: int = 8080
    """Viewer port."""
    quiet: bool = False
    """No progress bar."""

    def main(self) -> dict:
        """Build the config, create or reopen the run folder, train, print the held-out metrics."""
        from nfields.config import build_config, load_config
        from nfields.train.checkpoint import latest_run_dir, new_run_dir
        from nfields.train.trainer import Trainer

        cfg = build_config(self.scene, self.field, self.preset, self.set)
        name = self.name or f"{Path(self.scene).name}_{cfg.model.network}_{self.preset}"
        if self.resume:
            run_dir = Path(self.name) if self.name and Path(self.name).is_dir() else latest_run_dir(self.out, name)
            if run_dir is None:
                raise NFieldsError(f"--resume: no run named {name!r} under {self.out}")
            cfg = load_config(run_dir / "config.yaml")
            if self.set:
                from nfields.config import apply_dict, parse_overrides

                apply_dict(cfg, parse_overrides(self.set), "--set")
        else:
            run_dir = new_run_dir(self.out, name)
            cfg.name = run_dir.name
        viewer = None
        trainer = Trainer(cfg, run_dir, resume=self.resume, progress=not self.quiet)
        if self.viewer:
            viewer = _maybe_start_viewer(trainer, self.host, self.port)
            trainer.viewer = viewer
        try:
            result = trainer.train()
        except KeyboardInterrupt:
            path = trainer.save()
            print(f"interrupted at step {trainer.step}; checkpoint {path}; continue with --resume", file=sys.stderr)
            raise SystemExit(130) from None
        finally:
            if viewer is not None:
                viewer.close()
        print(f"run: {run_dir}")
        return result


def _maybe_start_viewer(trainer, host: str, port: int):
    """Start the live viewer if viser is installed; otherwise say how to get it and carry on."""
    try:
        from nfields.viewer.live import start_live_viewer
    except ImportError:
        return None
    try:
        return start_live_viewer(trainer, host=host, port=port)
    except NFieldsError as e:
        print(f"nfields: viewer off: {e}", file=sys.stderr)
        return None


@dataclass
class Render:
    """Render a finished run: its held-out views (PNG) and an orbit video around the scene; or, with --envmap
    FILE.hdr [--rotate DEG], relight an SDF + PBR run under a new environment."""

    run: Path
    """Run folder (runs/<name>)."""
    orbit_frames: int = 60
    """Frames in the orbit video (0 = none)."""
    downscale: int = 1
    """Render at 1/downscale resolution."""
    envmap: Path | None = None
    """Relight an SDF + PBR run under this equirectangular HDR map instead (renders/relit_<map>_<deg>/)."""
    rotate: float = 0.0
    """With --envmap: turn the map this many degrees about the scene's up axis."""
    exposure: float | None = None
    """With --envmap: radiance multiplier of the map (default: match the learned light's mean radiance)."""

    def main(self) -> Path:
        """Write renders/final/ and renders/orbit.mp4 (or .gif without ffmpeg); with --envmap, the relit views."""
        from nfields.train.render_run import relight_run, render_run

        if self.envmap is not None:
            return relight_run(
                self.run, self.envmap, rotate=self.rotate, exposure=self.exposure,
                orbit_frames=self.orbit_frames, downscale=self.downscale,
            )  # fmt: skip
        return render_run(self.run, orbit_frames=self.orbit_frames, downscale=self.downscale)


@dataclass
class Fields:
    """List the registered field backends with their options."""

    def main(self) -> None:
        """Print each backend and its default options."""
        import dataclasses

        from nfields.registry import network_config, registered_names

        for name in registered_names():
            cfg = network_config(name)
            opts = ", ".join(f"{f.name}={getattr(cfg, f.name)!r}" for f in dataclasses.fields(cfg))
            print(f"{name:10s} {opts}")


@dataclass
class Export:
    """Export a run's surface as a mesh: GLB/glTF/OBJ with UVs and baked PBR textures, or PLY with vertex colours."""

    run: Annotated[Path, tyro.conf.arg(metavar="RUN")]
    """Run folder (runs/<name>) with at least one checkpoint."""
    # A plain string checked by export_run, so a wrong name is the usual one-line error, not tyro's box.
    format: str = "glb"
    """glb (one file), gltf (+ .bin + PNGs), obj (+ .mtl + PBR PNGs) or ply (vertex colours, no textures)."""
    resolution: int = 256
    """Marching-cubes samples per axis over the field's bounds."""
    texture_size: int = 1024
    """Baked texture side in texels (glb/gltf/obj)."""
    decimate: int | None = None
    """Decimate to about this many faces; unset: 200000 for glb/gltf/obj (a texture atlas wants bigger faces than
    marching cubes makes at high resolution), all faces for ply; 0 keeps all."""
    level: float | None = None
    """Iso-level: SDF value (default 0) or density (default 2.5; lower it for a barely trained run)."""
    cull: bool = True
    """Drop faces no training camera sees (--no-cull keeps them)."""
    out: Path | None = None
    """Output file (default <run>/export/mesh.<format>)."""
    relight_check: Path | None = None
    """glb/gltf of an SDF + PBR run: render the exported asset and the field under this HDR map (turned
    --relight-rotate degrees) on held-out views and report the PSNR between them (relight_check.json)."""
    relight_rotate: float = 90.0
    """Rotation of the --relight-check map about the scene's up axis, in degrees."""

    def main(self):
        """Extract, clean, bake and write the mesh; print the path, face count and seconds."""
        from nfields.export.run_export import export_run

        if self.relight_check is not None and self.format.lower() not in ("glb", "gltf"):
            raise NFieldsError(f"--relight-check needs --format glb or gltf, not {self.format}")
        r = export_run(
            self.run, self.format, out=self.out, resolution=self.resolution, texture_size=self.texture_size,
            decimate_faces=self.decimate, level=self.level, cull=self.cull,
        )  # fmt: skip
        if r.material == "color":
            print("material: albedo baked from the field's colour (lighting included), roughness 1, metallic 0")
        elif r.material == "field":
            print("material: albedo, roughness, metallic and normals baked from the field's material head")
        if r.frame == "original":
            print("coordinates: the dataset's original frame (scene scale_mat applied)")
        print(f"exported {r.path}: {r.faces} faces, {r.vertices} vertices, {r.seconds:.1f} s")
        print("stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in r.stages.items()))
        if self.relight_check is not None:
            from nfields.export.relight_check import relight_check
            from nfields.train.render_run import open_run

            c = relight_check(open_run(self.run), r.path, self.relight_check, self.relight_rotate)
            views = ", ".join(f"{v['psnr']:.1f}" for v in c["views"])
            print(f"relight check ({Path(c['envmap']).name}, {c['rotate_deg']:g} deg): asset vs field PSNR "
                  f"{c['psnr']:.2f} dB (views: {views}) -> {r.path.parent / 'relight_check.json'}")  # fmt: skip
        return r


@dataclass
class View:
    """Open the web viewer on a finished run (live renders of its field) or on a mesh file (.glb/.gltf/.ply/.obj)."""

    target: Annotated[Path, tyro.conf.arg(metavar="TARGET")]
    """Run folder (runs/<name>) or mesh file."""
    host: str = "127.0.0.1"
    """Address to serve on; 0.0.0.0 exposes it to the network and must be asked for."""
    port: int = 8080
    """Port (a busy one moves to the next free port)."""
    seconds: float = 0.0
    """Serve this long, then exit (0 = until Ctrl-C)."""

    def main(self) -> None:
        """Serve until Ctrl-C or --seconds."""
        from nfields.viewer.live import view_target

        view_target(self.target, host=self.host, port=self.port, seconds=self.seconds)


@dataclass
class MakeScene:
    """Write a DTU-layout scene with ground truth (mesh, albedo/roughness/metallic/normal images, relit views),
    rendered physically (GGX + Lambert, HDR environment light, shadows) by nfields itself."""

    out: Annotated[Path, tyro.conf.arg(metavar="OUT")]
    """New scene folder (train on it with `nfields train --scene OUT`)."""
    envmap: Path = Path("../shared/data/envmaps/venice_sunset_1k.hdr")
    """Equirectangular .hdr environment map lighting the scene."""
    mesh: Path | None = None
    """Watertight mesh (OBJ/PLY/...); default: the analytic demo shape."""
    views: int = 48
    """Number of views (every 8th is held out)."""
    size: int = 200
    """Image side in pixels."""
    spp: int = 128
    """Light samples per pixel."""
    up: str = "y"
    """The mesh file's up axis (y or z)."""
    relight_rotation: float = 90.0
    """Second light for the relit ground truth: the map turned this many degrees about the up axis."""

    def main(self) -> Path:
        """Render and write the scene; print where it went."""
        from nfields.data.pbr_scene import PBRSceneConfig, make_pbr_scene

        cfg = PBRSceneConfig(self.views, self.size, self.spp, self.up, self.relight_rotation)
        out = make_pbr_scene(self.out, self.envmap, self.mesh, cfg)
        print(f"scene: {out} ({self.views} views {self.size}x{self.size}); train: nfields train --scene {out}")
        return out


@dataclass
class Eval:
    """Evaluate a finished run: held-out PSNR/SSIM, mask IoU, and on scenes with ground truth Chamfer, normal MAE,
    albedo PSNR (scale-aligned) and relit PSNR; written to RUN/eval.json."""

    run: Annotated[Path, tyro.conf.arg(metavar="RUN")]
    """Run folder (runs/<name>)."""
    downscale: int = 1
    """Evaluate at 1/downscale resolution."""
    mesh_resolution: int = 192
    """Marching-cubes resolution for Chamfer / normal error."""
    dtu_gt: Path | None = None
    """DTU's official Chamfer in mm: the folder holding DTU's Points/stl and ObsMask (its Points and SampleSet
    releases, e.g. 'SampleSet/MVS Data')."""
    dtu_scan: int | None = None
    """The DTU scan number for --dtu-gt (default: from the scene's name, dtu_scan24 -> 24)."""
    dtu_resolution: int = 512
    """Marching-cubes resolution for the official DTU metric."""

    def main(self) -> dict:
        """Compute, print and save the metrics."""
        import json

        from nfields.train.evaluate import evaluate_run

        out = evaluate_run(
            self.run,
            downscale=self.downscale,
            mesh_resolution=self.mesh_resolution,
            dtu_gt=self.dtu_gt,
            dtu_scan=self.dtu_scan,
            dtu_resolution=self.dtu_resolution,
        )
        print(json.dumps(out, indent=1))
        return out


def _commands() -> dict[str, type]:
    from nfields.tasks.image import FitImage
    from nfields.tasks.sdf import FitSdf

    cmds: dict[str, type] = {
        "train": Train,
        "render": Render,
        "fields": Fields,
        "fit-image": FitImage,
        "fit-sdf": FitSdf,
        "export": Export,
        "view": View,
        "make-scene": MakeScene,
        "eval": Eval,
    }
    return cmds


def entrypoint(argv: list[str] | None = None) -> int:
    """Console-script entry point: parse, run, and turn NFieldsError into one line + exit code 2."""
    cmds = _commands()
    try:
        cmd = tyro.extras.subcommand_cli_from_dict(
            cmds,
            args=argv,
            prog="nfields",
            config=(tyro.conf.PositionalRequiredArgs,),
            description="nfields: neural fields and 3D reconstruction, from a laptop CPU to a GPU.",
        )
        cmd.main()
    except NFieldsError as e:
        print(f"nfields: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(entrypoint())
