"""Model registry: `create_model("imp")`, `list_models()`; every model maps [0, 1] RGB images to logits.
`build_model(cfg, device)` makes a run's network from its config (cifarlab.models.build)."""

from cifarlab.models.registry import create_model, list_models, register_model
from cifarlab.models.summary import format_table, forward_flops, layer_table

# Importing the definitions fills the registry.
from cifarlab.models import cnn, fast, mobilenet  # noqa: F401,E402
from cifarlab.models.build import build_model, init_from_data  # noqa: E402

__all__ = ["create_model", "list_models", "register_model", "layer_table", "format_table", "forward_flops",
           "build_model", "init_from_data"]
