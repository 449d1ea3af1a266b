"""The ``nfields`` command line: one small dataclass per subcommand, each with ``main()``; tyro turns the field
docstrings into ``--help`` text. Every user error (:class:`NFieldsError`) becomes one line and exit code 2."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Literal

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
    """Render a finished run: its held-out views (PNG) and an orbit video around the scene."""

    run: Path
    """Run folder (runs/<name>)."""
    orbit_frames: int = 60
    """Frames in the orbit video (0 = none)."""
    downscale: int = 1
    """Render at 1/downscale resolution."""

    def main(self) -> Path:
        """Write renders/final/ and renders/orbit.mp4 (or .gif without ffmpeg)."""
        from nfields.train.render_run import render_run

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


def _commands() -> dict[str, type]:
    from nfields.tasks.image import FitImage
    from nfields.tasks.sdf import FitSdf

    cmds: dict[str, type] = {
        "train": Train,
        "render": Render,
        "fields": Fields,
        "fit-image": FitImage,
        "fit-sdf": FitSdf,
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
