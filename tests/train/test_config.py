import pytest

from nfields.config import build_config, load_config, parse_overrides, save_config
from nfields.errors import NFieldsError


def test_presets_merge_scene_and_backend_sections():
    cfg = build_config("lego", "hashgrid", "tiny")
    assert cfg.data.downscale == 8
    assert cfg.model.network == "hashgrid"
    assert cfg.model.network_options["log2_table"] == 14
    cfg = build_config("../somewhere/dtu_scan65", "mlp", "cpu")
    assert cfg.data.downscale == 4  # any DTU scan uses the preset's dtu section
    assert cfg.model.shading == "pbr" and cfg.model.view_light  # the pose-dependent light (DTU's robot rig)
    assert cfg.model.network_options["hidden"] == 128
    # A scene section can resize a backend over the preset's sizing; other backends and scenes keep theirs.
    demo, lego = build_config("demo", None, "cpu"), build_config("lego", "hashgrid", "cpu")
    assert demo.model.network_options["finest_res"] == 256 and lego.model.network_options["finest_res"] == 512
    assert demo.model.network_options["levels"] == lego.model.network_options["levels"]
    assert "finest_res" not in build_config("demo", "mlp", "cpu").model.network_options
    assert (
        build_config("demo", None, "cpu", ["model.network_options.finest_res=128"]).model.network_options["finest_res"]
        == 128
    )


def test_overrides_and_roundtrip(tmp_path):
    cfg = build_config("lego", None, "tiny", ["train.steps=7", "model.network_options.levels=3", "data.max_views=5"])
    assert cfg.train.steps == 7 and cfg.model.network_options["levels"] == 3 and cfg.data.max_views == 5
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize(
    "args, needle",
    [
        (["train.stpes=3"], "unknown key train.stpes; valid: steps"),
        (["trian.steps=3"], "unknown section 'trian'"),
        (["train.steps=abc"], "expected an integer"),
        (["steps=3"], "expected section.key=value"),
    ],
)
def test_bad_keys_are_one_line_errors(args, needle):
    with pytest.raises(NFieldsError) as e:
        build_config("lego", None, "tiny", args)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_unknown_preset():
    with pytest.raises(NFieldsError, match="unknown preset"):
        build_config("lego", None, "huge")


def test_parse_overrides_nested():
    assert parse_overrides(["a.b.c=1", "a.d=[1, 2]"]) == {"a": {"b": {"c": 1}, "d": [1, 2]}}
