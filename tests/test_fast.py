"""The fast recipe: schedule, optimiser groups, lookahead, alternating flips, translations, whitening, TTA,
and a tiny end-to-end run with its resume."""

import json

import pytest
import torch

from cifarlab.config import resolve_config
from cifarlab.data.augment import AugmentConfig, alternating_flips, augment_batch, translate
from cifarlab.models import create_model
from cifarlab.train import fit
from cifarlab.models.predict import tta_logits
from cifarlab.train.recipe import Lookahead, lr_at_step, make_optimizer, set_lr

from testdata import toy_data


def test_triangle_schedule_warms_up_then_decays():
    cfg = resolve_config("fast", epochs=4)
    lrs = [lr_at_step(cfg, e, s, 250) for e in range(1, 5) for s in range(250)]
    peak = lrs.index(max(lrs))
    assert lrs[0] == pytest.approx(cfg.lr * cfg.lr_start)
    assert peak == round(cfg.warmup * 1000)
    assert max(lrs) == pytest.approx(cfg.lr, rel=0.05)
    assert all(a < b for a, b in zip(lrs[:peak], lrs[1:peak + 1]))
    assert all(a > b for a, b in zip(lrs[peak:-1], lrs[peak + 1:]))
    assert lrs[-1] == pytest.approx(cfg.lr * cfg.lr_end, rel=0.05)


def test_drops_schedule_is_the_study_one():
    cfg = resolve_config("imp1")
    assert [lr_at_step(cfg, e, 3, 10) for e in (1, 25, 26, 36)] == [cfg.lr_at(e) for e in (1, 25, 26, 36)]
    assert cfg.lr_at(26) == pytest.approx(cfg.lr * 0.1)


def test_sgd_gives_batchnorm_shifts_their_own_rate_and_decay():
    cfg = resolve_config("fast")
    model = create_model(cfg.model)
    opt = make_optimizer(model, cfg)
    set_lr(opt, 0.5)
    bn_group, rest = opt.param_groups
    assert bn_group["lr"] == pytest.approx(0.5 * 64) and rest["lr"] == pytest.approx(0.5)
    assert bn_group["weight_decay"] == pytest.approx(cfg.weight_decay / 64)
    assert opt.defaults["nesterov"] and opt.defaults["momentum"] == pytest.approx(0.85)
    n_bn = sum(m.bias.numel() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert sum(p.numel() for p in bn_group["params"]) == n_bn
    assert not any(p is model.whiten.weight for g in opt.param_groups for p in g["params"])  # frozen


def test_alternating_flips_show_every_image_both_ways():
    idx = torch.randperm(1000)
    e1, e2, e3 = (alternating_flips(idx, 1000, e, seed=3) for e in (1, 2, 3))
    assert torch.equal(e1, ~e2) and torch.equal(e1, e3)
    assert 400 < int(e1.sum()) < 600
    assert torch.equal(alternating_flips(idx[:10], 1000, 1, 3), e1[:10])  # per image, not per batch


def test_translate_moves_content_with_reflect_padding():
    x = torch.arange(2 * 5 * 5.0).view(2, 1, 5, 5)
    out = translate(x, torch.tensor([[2, 0], [0, -1]]))
    assert torch.equal(out[0, 0, :, 2:], x[0, 0, :, :3])  # right by 2
    assert torch.equal(out[0, 0, :, 0], x[0, 0, :, 2]) and torch.equal(out[0, 0, :, 1], x[0, 0, :, 1])  # mirrored
    assert torch.equal(out[1, 0, :4], x[1, 0, 1:])  # up by 1
    assert torch.equal(translate(x, torch.zeros(2, 2, dtype=torch.long)), x)


def test_augment_batch_translates_within_range():
    cfg = AugmentConfig(translate=2)
    x = torch.zeros(64, 3, 16, 16)
    x[:, :, 8, 8] = 1.0  # one bright pixel: where it lands is the shift
    out = augment_batch(x, cfg, torch.Generator().manual_seed(0))
    pos = out[:, 0].flatten(1).argmax(1)
    dy, dx = pos // 16 - 8, pos % 16 - 8
    assert dx.abs().max() == 2 and dy.abs().max() == 2 and len(set(zip(dx.tolist(), dy.tolist()))) > 10


def test_whitening_layer_decorrelates_patches():
    g = torch.Generator().manual_seed(0)
    base = torch.rand(400, 1, 32, 32, generator=g)
    images = (0.7 * base + 0.3 * torch.rand(400, 3, 32, 32, generator=g)).clamp(0, 1)  # strongly correlated channels
    model = create_model("fast_small")
    model.init_from_data(images)
    with torch.no_grad():
        z = model.whiten((images - model.mean) / model.std)[:, :12]  # the eigen-patches, without their negatives
    z = z.permute(0, 2, 3, 1).reshape(-1, 12)
    cov = torch.cov(z.T)
    assert torch.allclose(cov, torch.eye(12), atol=0.05)


def test_lookahead_pulls_towards_slow_weights_more_at_the_end():
    model = torch.nn.Linear(3, 1)
    la = Lookahead(model)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    la.step(model, progress=0.0)  # decay 0: nothing is held back
    assert torch.allclose(model.weight, start + 1)
    with torch.no_grad():
        model.weight.add_(1.0)
    la.step(model, progress=1.0)  # decay 0.95**5: mostly the slow weights
    assert torch.allclose(model.weight, start + 1 + (1 - 0.95 ** 5))


def test_tta_averages_views():
    model = create_model("fast_small").eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(tta_logits(model, x, "flip"), 0.5 * (model(x) + model(x.flip(-1))))
        both = tta_logits(model, x, "flip_translate")
        assert both.shape == (4, 10) and not torch.allclose(both, tta_logits(model, x, "flip"))


class Killed(Exception):
    pass


def _die_after_epoch(n):
    def log(msg):
        if msg.startswith(f"epoch {n}/"):  # logged after the epoch's checkpoint is written
            raise Killed
    return log


def test_fast_preset_learns_and_resumes_exactly(tmp_path):
    data = toy_data(n_train=400, n_val=100)
    cfg = resolve_config("fast", ["batch_size=64", "lr=0.1", "eval_batch_size=100"], epochs=3)  # lr scaled to the batch
    straight = fit(cfg, data, tmp_path / "a", quiet=True)
    assert straight["val_accuracy"] > 0.3 and straight["tta"] == "flip_translate"  # 10 classes: chance is 0.1
    with pytest.raises(Killed):
        fit(cfg, data, tmp_path / "b", quiet=True, log=_die_after_epoch(1))
    resumed = fit(cfg, data, tmp_path / "b", resume=True, quiet=True)
    # the lookahead weights are in the checkpoint and the schedule is per step: the same final numbers
    assert resumed["val_accuracy"] == straight["val_accuracy"] and resumed["val_loss"] == straight["val_loss"]
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in "ab")
    assert a["best_val_accuracy"] == b["best_val_accuracy"]


def test_unavailable_device_is_one_line_before_any_work(tmp_path, capsys):
    from cifarlab.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code = main(["train", "--preset", "fast", "--device", "cuda", "--data", str(tmp_path / "nothing-here"),
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "CUDA is not available" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_device_flag_reaches_the_config():
    from cifarlab.cli import build_parser

    args = build_parser().parse_args(["evaluate", "run", "--device", "cpu"])
    assert args.device == "cpu"
    assert resolve_config("fast", device="cpu").device == "cpu"


def test_recipe_options_on_cached_mobilenet_features(tmp_path):
    """Lookahead follows what trains (the cached-feature tail), and TTA is skipped on features, not images."""
    cfg = resolve_config("mnet1", ["weights=null", "augment=null", "input_size=32", "lookahead=true", "tta=flip",
                                   "batch_size=20", "eval_batch_size=50"], epochs=2)
    metrics = fit(cfg, toy_data(n_train=40, n_val=20), tmp_path / "run", quiet=True)
    assert metrics["finished"] and metrics["embed_seconds"] > 0
