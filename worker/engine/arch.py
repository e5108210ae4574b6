"""Architecture adapter: where a decoder's MLP blocks live, and which families we can edit.

Supported: Llama, Qwen2/Qwen2.5, Mistral, Gemma-style decoders, i.e. `model.layers[i].mlp.{gate,up,down}_proj`
with a `post_attention_layernorm` feeding the MLP.
"""

from __future__ import annotations

from torch import nn

from .errors import UnsupportedArchitectureError

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral", "gemma", "gemma2", "qwen3")
MODULE_ATTR = {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"}


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise UnsupportedArchitectureError(
            f"unsupported architecture {type(model).__name__}: no model.layers; "
            f"supported families: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    return layers


def check_supported(model: nn.Module) -> None:
    """Raise a clear error naming what was found unless every layer has the gated-MLP layout we edit."""
    layers = decoder_layers(model)
    first = layers[0]
    mlp = getattr(first, "mlp", None)
    missing = [a for a in ("gate_proj", "up_proj", "down_proj") if mlp is None or not hasattr(mlp, a)]
    if missing or not hasattr(first, "post_attention_layernorm"):
        found = type(mlp).__name__ if mlp is not None else "no mlp"
        model_type = getattr(getattr(model, "config", None), "model_type", "?")
        raise UnsupportedArchitectureError(
            f"unsupported architecture: model_type={model_type!r}, layer MLP {found} lacks "
            f"{', '.join(missing) or 'post_attention_layernorm'}; supported families: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)} (gated MLP with gate_proj/up_proj/down_proj)"
        )


def mlp_of(model: nn.Module, layer: int) -> nn.Module:
    layers = decoder_layers(model)
    if not 0 <= layer < len(layers):
        raise UnsupportedArchitectureError(f"layer {layer} out of range: the model has {len(layers)} layers")
    return layers[layer].mlp


def linear_of(model: nn.Module, layer: int, module: str) -> nn.Linear:
    """The nn.Linear of `module` ('gate' | 'up' | 'down') in decoder layer `layer`."""
    return getattr(mlp_of(model, layer), MODULE_ATTR[module])


def num_layers(model: nn.Module) -> int:
    return len(decoder_layers(model))
