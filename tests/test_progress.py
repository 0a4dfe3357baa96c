import io

from cifarlab.train.progress import Progress, fmt_time


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_fmt_time():
    assert fmt_time(5) == "0:05" and fmt_time(125) == "2:05" and fmt_time(3725) == "1:02:05"


def test_tty_redraws_in_place_with_eta():
    out = FakeTTY()
    p = Progress(4, "epoch 1/3", stream=out, tty_every=0)
    for i in range(1, 5):
        p.update(i, lambda: "loss 1.0 acc 0.5")
    text = out.getvalue()
    assert text.count("\r") >= 4 and "\n" not in text
    assert "epoch 1/3" in text and "3/4" in text and "loss 1.0 acc 0.5" in text and "<" in text  # elapsed<ETA


def test_plain_lines_when_not_a_tty_and_stats_fetched_lazily():
    out = io.StringIO()
    calls = []
    p = Progress(100, "epoch 2/3", stream=out, log_every=3600)
    for i in range(1, 101):
        p.update(i, lambda: calls.append(1) or "loss 2.0")
    assert out.getvalue() == "" and calls == []  # nothing due yet: no device sync paid
    p = Progress(10, "epoch 2/3", stream=out, log_every=0)
    p.update(5, lambda: "loss 2.0")
    assert out.getvalue().endswith("\n") and "\r" not in out.getvalue() and "5/10" in out.getvalue()


def test_quiet_prints_nothing():
    out = FakeTTY()
    p = Progress(2, "x", quiet=True, stream=out, tty_every=0)
    p.update(1)
    p.update(2)
    assert out.getvalue() == ""
