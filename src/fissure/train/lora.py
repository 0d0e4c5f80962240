"""LoRA on any torch model, through peft (the library made for it).

peft's low-level API (``inject_adapter_in_model``) wraps the chosen ``nn.Linear`` modules of any
``nn.Module`` in LoRA layers and freezes everything else, so the same code adapts our GPT, our
Llama (separate or fused q/k/v and gate/up projections) and HF models. This module adds what a
fine-tuning run needs around it: targets named by group or name and checked against the model
(a target that matches nothing lists the projections that exist), the adapter's weights in and
out, and merging it into the base.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..config import check_range
from ..errors import ConfigError

# Target groups: our module names and HF's for the same projections.
GROUPS = {
    "attention": ("q_proj", "k_proj", "v_proj", "qkv", "out", "o_proj", "c_attn", "c_proj"),
    "mlp": ("gate", "up", "down", "gate_up", "fc", "proj", "gate_proj", "up_proj", "down_proj", "c_fc"),
}
HF_NAMES = {"o_proj": "out", "gate_proj": "gate", "up_proj": "up", "down_proj": "down"}  # HF Llama -> ours


@dataclass
class LoraSpec:
    rank: int = 16
    alpha: float = 32.0  # the update is scaled by alpha / rank
    dropout: float = 0.05
    targets: list[str] = field(default_factory=lambda: ["attention", "mlp"])  # groups or module names

    def __post_init__(self) -> None:
        check_range("lora.rank", self.rank, 1, 2**16, integer=True)
        check_range("lora.alpha", self.alpha, 0, lo_open=True)
        check_range("lora.dropout", self.dropout, 0, 1, hi_open=True)
        if not self.targets or not all(isinstance(t, str) and t for t in self.targets):
            raise ValueError("lora.targets must name at least one group (attention, mlp) or module")


def _is_projection(module: nn.Module) -> bool:
    # transformers' Conv1D (GPT-2's fused c_attn, c_proj, c_fc) is a Linear with transposed weights; peft adapts it
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def _projections(model: nn.Module) -> dict[str, list[str]]:
    """Leaf name -> full names of the model's Linear layers that LoRA may adapt (not the output head)."""
    out: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if _is_projection(module) and leaf not in ("lm_head", "head", "score"):
            out.setdefault(leaf, []).append(name)
    return out


def resolve_targets(model: nn.Module, targets: list[str]) -> list[str]:
    """The Linear leaf names ``targets`` select in ``model``; a target matching none is a ConfigError."""
    found = _projections(model)
    chosen: list[str] = []
    for target in targets:
        names = GROUPS.get(target, tuple(dict.fromkeys((target, HF_NAMES.get(target, target)))))
        hits = [n for n in names if n in found]
        if not hits:
            raise ConfigError(f"LoRA target '{target}' matches no Linear module; the model has: "
                              f"{', '.join(sorted(found)) or 'none'} (groups: {', '.join(GROUPS)})")
        chosen += [h for h in hits if h not in chosen]
    return chosen


def apply_lora(model: nn.Module, spec: LoraSpec) -> nn.Module:
    """Wrap ``spec``'s target projections in LoRA layers (in place); only the adapter trains."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise ConfigError("LoRA needs peft: pip install 'fissure[hf]' (or --method full)") from None

    config = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                        target_modules=resolve_targets(model, spec.targets), bias="none")
    return inject_adapter_in_model(config, model)


def peft_config(model: nn.Module) -> dict:
    """The adapter's peft ``LoraConfig`` as a JSON-ready dict (``adapter_config.json``)."""
    config = getattr(model, "peft_config", {}).get("default")
    if config is None:
        raise ConfigError("the model carries no LoRA adapter")
    data = config.to_dict()
    data["target_modules"] = sorted(data["target_modules"])
    return data


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's weights alone (peft's naming), for ``adapter_model.safetensors``."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(model).items()}


def load_adapter_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Put saved adapter weights into a model that :func:`apply_lora` prepared the same way."""
    from peft import set_peft_model_state_dict

    expected = {name: tensor.shape for name, tensor in adapter_state(model).items()}
    if set(state) != set(expected):
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        raise ConfigError(f"adapter weights do not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    for name, tensor in state.items():
        if tensor.shape != expected[name]:
            raise ConfigError(f"adapter weight {name} has shape {tuple(tensor.shape)}, the model expects "
                              f"{tuple(expected[name])}")
    set_peft_model_state_dict(model, state)


def _lora_layers(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    from peft.tuners.lora import LoraLayer

    return [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
            if isinstance(child, LoraLayer)]


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put the plain Linear back (in place)."""
    for parent, name, layer in _lora_layers(model):
        layer.merge()
        setattr(parent, name, layer.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config
    for p in model.parameters():
        p.requires_grad_(True)
    return model
