"""The package's shape: imports run one way through the layers (ARCHITECTURE.md), and every registered
model builds, runs and is counted as `cifarlab models` prints it."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cifarlab import config
from cifarlab.cli import main
from cifarlab.models import create_model, list_models

SRC = Path(__file__).resolve().parents[1] / "src"

# Lowest first. A module may import from its own layer and the layers before it, never from a later one.
# (A name matches a module and everything under it; the longest match wins.)
LAYERS = [
    ["cifarlab", "cifarlab.errors", "cifarlab.io", "cifarlab.memory", "cifarlab.pictures"],  # root (CLASSES, __version__), helpers
    ["cifarlab.config", "cifarlab.presets", "cifarlab.device"],
    ["cifarlab.data"],
    ["cifarlab.models"],
    ["cifarlab.rundir"],
    ["cifarlab.train"],
    ["cifarlab.evaluate", "cifarlab.export"],  # export: reads a run's model and results, writes ONNX/TorchScript/safetensors
    ["cifarlab.viz", "cifarlab.report", "cifarlab.loggers"],  # loggers: live-logging callbacks for fit
    ["cifarlab.reproduce", "cifarlab.profiles", "cifarlab.lanes", "cifarlab.cli", "cifarlab.__main__",
     "cifarlab.app", "cifarlab.sweep"],  # sweep: runs as an Optuna study's trials (reproduce --storage uses it)
]


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted((SRC / "cifarlab").rglob("*.py"))}


def layer(module: str) -> int:
    matches = [(len(name), i) for i, names in enumerate(LAYERS) for name in names
               if module == name or module.startswith(name + ".")]
    assert matches, f"{module} is in no layer: add it to LAYERS here and to ARCHITECTURE.md"
    return max(matches)[1]


def imports(module: str) -> set[str]:
    """Every cifarlab module `module` imports, at the top or inside a function."""
    tree = ast.parse(MODULES[module].read_text())
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from .y import z
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from cifarlab.viz import sheet` imports the module cifarlab.viz.sheet
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names}
    return {m for m in found if m == "cifarlab" or m.startswith("cifarlab.")}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_the_layers(module):
    upward = [f"{module} (layer {layer(module)}) imports {m} (layer {layer(m)})"
              for m in sorted(imports(module)) if layer(m) > layer(module)]
    assert not upward, "; ".join(upward)


def test_the_rule_sees_function_level_imports():
    source = "def f():\n    from cifarlab.cli import main\n"
    assert "cifarlab.cli" in {a.module for a in ast.walk(ast.parse(source)) if isinstance(a, ast.ImportFrom)}
    assert layer("cifarlab.viz.probe") > layer("cifarlab.evaluate.metrics") > layer("cifarlab.rundir")


def test_layers_are_written_down_in_architecture_md():
    doc = (SRC.parent / "ARCHITECTURE.md").read_text()
    line = next(ln for ln in doc.splitlines() if ln.startswith("Layers:"))
    named = [re.sub(r"[`\s]", "", part).split("/") for part in line.removeprefix("Layers:").split("→")]
    ours = [[n.removeprefix("cifarlab.") for n in names] for names in LAYERS[1:]]
    assert [sorted(n) for n in named] == [sorted(n) for n in ours]


def test_table1_needs_no_run_control_or_weight_readers():
    code = ("import sys, cifarlab.report.html; "
            "print(sorted(m for m in sys.modules if m.startswith(('cifarlab.train', 'cifarlab.models.weights'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_config_knows_every_registered_model():
    assert list(config.MODELS) == list_models()


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_builds_runs_and_counts(name, capsys):
    """timm-style: build, forward a batch at a small input size, count as `cifarlab models` does."""
    torch.manual_seed(0)
    model = create_model(name).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 32, 32))
    assert out.dim() == 2 and out.shape[0] == 2 and torch.isfinite(out).all()
    if not name.startswith("mobilenet"):  # the MobileNets are backbones: features, not CIFAR-10 logits
        assert out.shape[1] == 10
    layers = [m for m in model.modules() if not list(m.children())]
    params = sum(p.numel() for m in layers for p in m.parameters(recurse=False))
    stats = sum(b.numel() for m in layers for b in m.buffers(recurse=False) if b.is_floating_point())  # BN, as Keras
    assert params > 0 and params == sum(p.numel() for p in model.parameters())  # every weight is in a layer
    assert main(["models", name, "--input-size", "32"]) == 0
    total = re.search(r"^Total\s+([\d,]+)$", capsys.readouterr().out, re.M).group(1)
    assert int(total.replace(",", "")) == params + stats
