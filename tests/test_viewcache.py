"""The MobileNet view cache: built once, shared, verified, kill-safe, and each view shown once per K epochs."""

import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from cifarlab.data.augment import AugmentConfig
from cifarlab.models import create_model
from cifarlab.models.transfer import TransferNet
from cifarlab.train import viewcache

AUG = AugmentConfig(rotation=20, width_shift=0.1, height_shift=0.1, zoom=(0.8, 1.3), channel_shift=0.2, hflip=True)


def tiny_net(trainable: str = "last_conv") -> TransferNet:
    torch.manual_seed(0)
    backbone = create_model("mobilenet_v1", alpha=0.25)
    for m in backbone.modules():  # BN statistics from a batch, so the signal survives 26 untrained layers
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 1.0
    with torch.no_grad():
        backbone.train()(torch.rand(32, 3, 32, 32))
    return TransferNet(backbone, input_size=32, trainable=trainable)


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def build(tmp_path, net=None, k=3, **kw):
    return viewcache.load_or_build(net or tiny_net(), images(40), images(12, 1), AUG, k, 0, tmp_path, quiet=True,
                                   log=lambda m: None, **kw)


def test_views_are_augmented_embeddings_and_validation_is_plain(tmp_path):
    net = tiny_net()
    views = build(tmp_path, net)
    assert views.k == 3 and views.train[0].shape[0] == 40 and views.train[0].dtype == np.float16
    a, b = (torch.tensor(np.asarray(v)).float() for v in views.train[:2])
    assert (a - b).abs().mean() > 1e-3  # different draws of the augmentation
    plain = net.embed_shared(images(12, 1).float() / 255).half().float()
    assert torch.allclose(torch.tensor(np.asarray(views.val)).float(), plain, atol=1e-3)
    assert not torch.allclose(a, net.embed_shared(images(40).float() / 255).half().float(), atol=1e-2)


def test_mnet1_and_mnet2_share_one_cache(tmp_path):
    one, two = tiny_net("head"), tiny_net("last_conv")
    two.load_state_dict(one.state_dict(), strict=False)  # same pretrained backbone; heads differ
    assert one.n_shared == two.n_shared == len(two.frozen)
    assert build(tmp_path, one).folder == build(tmp_path, two).folder
    x = torch.rand(2, 3, 32, 32)
    one.eval()
    assert torch.allclose(one.shared_tail_module().eval()(one.embed_shared(x)), one(x), atol=1e-5)


def test_second_call_reuses_and_corruption_is_rebuilt(tmp_path, capsys):
    views = build(tmp_path)
    path = views.folder / "train_view1.npy"
    before = np.asarray(views.train[1]).copy()
    mtime = path.stat().st_mtime_ns
    assert build(tmp_path).folder == views.folder and path.stat().st_mtime_ns == mtime  # reused, not rebuilt
    with open(path, "r+b") as f:  # flip a byte in the data
        f.seek(-7, 2)
        b = f.read(1)
        f.seek(-7, 2)
        f.write(bytes([b[0] ^ 0xFF]))
    again = build(tmp_path)
    assert "corrupt" in capsys.readouterr().err
    assert np.array_equal(np.asarray(again.train[1]), before)  # rebuilt identically (seeded draws)


def test_a_killed_build_leaves_no_view_and_resumes(tmp_path):
    net = tiny_net()
    calls = {"n": 0}
    real = net.embed_shared

    per_view = 1 + math.ceil(40 / viewcache.CHUNK)  # a shape probe, then the chunks of 40 images

    def dies_in_view_two(x):
        calls["n"] += 1
        if calls["n"] == per_view + 2:  # the second view's first chunk
            raise KeyboardInterrupt
        return real(x)

    net.embed_shared = dies_in_view_two
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path, net)
    folder = next((tmp_path / "views").iterdir())
    done = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    assert done == ["train_view0.npy", "train_view0.npy.sha256"]  # the finished view is kept
    assert not list(folder.glob(".*.part"))
    net.embed_shared = real
    views = build(tmp_path, net)
    assert views.k == 3 and (folder / "val.npy.sha256").is_file()


def test_epoch_features_show_each_view_once_per_k_epochs(tmp_path):
    views = build(tmp_path, k=3)
    seen = np.stack([viewcache.epoch_features(views, e, seed=0).float().numpy() for e in (1, 2, 3)])
    stack = np.stack([np.asarray(v, dtype=np.float32) for v in views.train])  # (K, N, ...)
    for i in range(40):
        which = [int(np.argmin([np.abs(stack[v, i] - seen[e, i]).sum() for v in range(3)])) for e in range(3)]
        assert sorted(which) == [0, 1, 2]


def test_two_processes_building_at_once_agree(tmp_path):
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {os.path.dirname(__file__)!r})
        import numpy as np, test_viewcache as t
        from pathlib import Path
        v = t.build(Path({str(tmp_path)!r}))
        print(sum(float(np.asarray(a, dtype=np.float64).sum()) for a in v.train))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert outs[0][0] == outs[1][0]
    folder = next((tmp_path / "views").iterdir())
    assert len(list(folder.glob("*.sha256"))) == 4 and not list(folder.glob(".*.part"))


def test_fit_on_views_trains_and_resumes_exactly(tiny_tree, tmp_path):
    from cifarlab.config import resolve_config
    from cifarlab.data import load_cifar10
    from cifarlab.io import load_checkpoint
    from cifarlab.train import fit

    data = load_cifar10(str(tiny_tree), progress=False)
    sets = ["weights=null", "alpha=0.25", "input_size=32", "aug_views=2", "batch_size=16", "epochs=3"]
    cfg = resolve_config("mnet2", sets)
    straight = fit(cfg, data, tmp_path / "straight", quiet=True)
    assert straight["finished"] and straight["embed_seconds"] > 0
    first = resolve_config("mnet2", sets[:-1] + ["epochs=1"])
    fit(first, data, tmp_path / "resumed", quiet=True)
    cfg3 = resolve_config("mnet2", sets)
    resumed = fit(cfg3, data, tmp_path / "resumed", resume=True, quiet=True)
    assert resumed["val_accuracy"] == straight["val_accuracy"]
    a, b = (load_checkpoint(tmp_path / r / "last.pt")["model"] for r in ("straight", "resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_without_augmentation_one_view_is_the_plain_images_shared_by_both_mnets(tiny_tree, tmp_path, capsys):
    from cifarlab.config import resolve_config
    from cifarlab.data import load_cifar10
    from cifarlab.train import fit

    data = load_cifar10(str(tiny_tree), progress=False)
    sets = ["weights=null", "alpha=0.25", "input_size=32", "augment=null", "aug_views=1", "batch_size=16", "epochs=1"]
    fit(resolve_config("mnet1", sets), data, tmp_path / "m1")
    fit(resolve_config("mnet2", sets), data, tmp_path / "m2")
    said = [ln for ln in capsys.readouterr().err.splitlines() if "1 un-augmented view(s)" in ln]
    assert len(said) == 2 and said[0].split(" from ")[1].split()[0] == said[1].split(" from ")[1].split()[0]


def test_ctrl_c_during_an_embedding_pass_stops_at_the_next_chunk(tmp_path, monkeypatch):
    """A view pass takes minutes on a CPU: one Ctrl-C stops it at the next chunk with the one-line resume
    message, keeping the views already finished (before, the signal waited for the whole pass)."""
    import signal

    from cifarlab.train import runctl

    monkeypatch.setattr(viewcache, "CHUNK", 8)
    net = tiny_net()
    calls = {"n": 0}
    real = net.embed_shared

    def ctrl_c_in_view_two(x):
        calls["n"] += 1
        if calls["n"] == 8:  # a probe and 5 chunks for view 1, a probe and the first chunk of view 2
            os.kill(os.getpid(), signal.SIGINT)
        return real(x)

    net.embed_shared = ctrl_c_in_view_two
    with pytest.raises(runctl.Interrupted) as e:
        with runctl.RunControl(tmp_path / "run"):
            build(tmp_path, net)
    assert str(e.value).startswith("interrupted while embedding training view 2/3 (1/5): what had finished is kept.")
    assert calls["n"] == 8  # stopped at the next chunk, not at the end of the pass
    folder = next((tmp_path / "views").iterdir())
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == \
        ["train_view0.npy", "train_view0.npy.sha256"]
