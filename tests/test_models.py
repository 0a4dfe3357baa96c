import pytest
import torch
import torch.nn as nn

from cifarlab.errors import UserError
from cifarlab.models import create_model, format_table, layer_table, list_models
from cifarlab.models.cnn import conv_kernels


def test_registry_has_the_study_models():
    assert {"base", "imp"} <= set(list_models())
    with pytest.raises(UserError, match="unknown model 'nope'"):
        create_model("nope")


@pytest.mark.parametrize("name", ["base", "imp"])
def test_logits_shape(name):
    assert create_model(name)(torch.rand(4, 3, 32, 32)).shape == (4, 10)


def test_imp_matches_table_1():
    rows = layer_table(create_model("imp"))
    convs = [(shape, params) for kind, shape, params in rows if kind == "Conv. 2D"]
    assert convs == [("32, 32, 32", 896), ("32, 32, 32", 9248), ("16, 16, 64", 18496),
                     ("8, 8, 128", 73856), ("8, 8, 256", 295168)]
    kinds = [k for k, _, _ in rows]
    assert kinds.count("ELU") == 5 and kinds.count("Max pooling 2D") == 3
    assert [k for k in kinds if k.startswith("Dropout")] == ["Dropout (0.1)", "Dropout (0.2)", "Dropout (0.3)"]
    flatten = next(s for k, s, _ in rows if k == "Flatten")
    assert flatten == "4096"
    assert rows[-2] == ("Dense", "10", 40970)  # Table 1's "40970" is this layer's parameter count
    assert sum(p for _, _, p in rows) == 438_634


def test_base_matches_table_1():
    rows = layer_table(create_model("base"))
    assert [k for k, _, _ in rows[:-1]] == ["Conv. 2D", "Batch norm.", "ReLU", "Flatten", "Dense", "ReLU",
                                            "Dropout (0.5)", "Dense"]
    assert [s for _, s, _ in rows[:4]] == ["32, 32, 32"] * 3 + ["32768"]
    assert rows[4][2] == 32768 * 512 + 512
    bn = create_model("base")[1]
    assert bn.eps == 1e-3 and bn.momentum == pytest.approx(0.01)  # Keras defaults


def test_keras_initialisers():
    torch.manual_seed(0)
    model = create_model("imp")
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            fan_out = m.weight.shape[0] * (m.weight[0, 0].numel())
            limit = (6 / (fan_in + fan_out)) ** 0.5
            assert m.weight.abs().max() <= limit + 1e-6
            assert m.weight.abs().max() > 0.9 * limit  # uniform over the whole Glorot range
            assert torch.all(m.bias == 0)


def test_conv_kernels_are_what_l2_applies_to():
    model = create_model("imp")
    kernels = conv_kernels(model)
    assert len(kernels) == 5 and all(k.dim() == 4 for k in kernels)


def test_format_table_lists_every_layer():
    text = format_table("imp", layer_table(create_model("imp")))
    assert text.startswith("IMP") and "Total" in text and "438,634" in text
