import pytest

from cifarlab.config import build_config, list_presets, load_config, resolve_config, save_config
from cifarlab.errors import UserError


def test_presets_ship_with_the_package():
    assert {"base", "imp1", "imp2"} <= set(list_presets())
    for name in ("base", "imp1", "imp2"):
        cfg = resolve_config(name)
        assert cfg.preset == name and cfg.epochs > 0


def test_imp_presets_follow_the_study():
    imp1, imp2 = resolve_config("imp1"), resolve_config("imp2")
    assert imp1.model == imp2.model == "imp"
    assert imp1.l2 == imp2.l2 == 1e-4 and imp1.lr == 1e-3
    assert not (imp1.augment.rotation or imp1.augment.hflip)
    a = imp2.augment
    assert (a.rotation, a.width_shift, a.height_shift, a.zoom, a.channel_shift, a.hflip, a.fill) == \
        (20, 0.1, 0.1, (0.8, 1.3), 0.2, True, "nearest")
    assert imp2.epochs > imp1.epochs  # "convergence took roughly 8 times more epochs"


def test_overrides_and_direct_flags():
    cfg = resolve_config("imp2", ["augment.rotation=10", "lr=5e-4", "lr_drops=[[3, 0.5]]"], epochs=4, seed=None)
    assert cfg.augment.rotation == 10 and cfg.lr == 5e-4 and cfg.epochs == 4 and cfg.seed == 0
    assert cfg.lr_drops == [[3, 0.5]]


def test_lr_drops_are_cumulative_and_start_after_their_epoch():
    cfg = resolve_config("imp1", ["lr_drops=[[2, 0.1], [4, 0.5]]"])
    assert [cfg.lr_at(e) for e in (1, 2, 3, 4, 5)] == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4, 5e-5])


@pytest.mark.parametrize("override, message", [
    (["lr_dropz=1"], "unknown config key 'lr_dropz'; did you mean 'lr_drops'"),
    (["augment.rotaton=1"], "did you mean 'augment.rotation'"),
    (["epochs=0"], "'epochs' must be positive"),
    (["epochs=2.5"], "'epochs' must be an integer"),
    (["lr=abc"], "'lr' must be a number"),
    (["augment.zoom=[1.3, 0.8]"], "augment.zoom"),
    (["augment.fill=wrap"], "augment.fill"),
    (["device=tpu"], "device"),
    (["model=resnet"], "unknown model 'resnet'"),
    (["hflip"], "key=value"),
    (["augment=3"], "augment"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("(", r"\(")):
        resolve_config("imp2", override)


def test_unknown_preset_suggests():
    with pytest.raises(UserError, match="did you mean 'imp2'"):
        resolve_config("imp3")


def test_save_load_roundtrip(tmp_path):
    cfg = resolve_config("imp2", ["seed=3"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


def test_yaml_must_be_safe(tmp_path):
    evil = tmp_path / "config.yaml"
    marker = tmp_path / "ran"
    evil.write_text(f"!!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(UserError, match="cannot read config"):
        load_config(evil)
    assert not marker.exists()
    with pytest.raises(UserError):
        build_config(["not", "a", "mapping"])
