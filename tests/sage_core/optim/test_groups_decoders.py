"""sage_param_groups on decoder-only LMs, the models chat and completion jobs train: every
projection of every layer gets SAGE; embeddings, norms and the output head do not."""

from __future__ import annotations

from pathlib import Path

import pytest
import transformers
from torch import nn

from sage_core.optim import find_sage_scope, sage_param_groups
from sage_core.optim.groups import NO_BLOCKS_REASON
from sage_core.testing import build_tiny_gpt2, build_tiny_llama

LLAMA_PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                     "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
SMALL = dict(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)


def _sage_by_name(model: nn.Module) -> dict[str, bool]:
    """parameter name -> whether it gets SAGE; every trainable tensor in exactly one group
    (a tied tensor is listed under the first of its names)."""
    names = {id(p): name for name, p in model.named_parameters()}
    grouped = [(names[id(p)], g["use_sage"]) for g in sage_param_groups(model) for p in g["params"]]
    assert len(grouped) == len({name for name, _ in grouped}) == len(names)
    return dict(grouped)


@pytest.mark.parametrize("tied", [False, True])
def test_llama_every_projection_of_every_layer_gets_sage(tied: bool, tmp_path: Path):
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    if tied:
        model = LlamaForCausalLM(LlamaConfig(**SMALL, tie_word_embeddings=True))
    else:  # the tiny Llama the chat tests train
        model = AutoModelForCausalLM.from_pretrained(build_tiny_llama(tmp_path, layers=3))
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    sage = _sage_by_name(model)
    expected = {f"model.layers.{i}.{proj}.weight" for i in range(3) for proj in LLAMA_PROJECTIONS}
    assert {name for name, s in sage.items() if s} == expected
    plain = {name for name, s in sage.items() if not s}
    assert plain == {"model.embed_tokens.weight", "model.norm.weight",
                     *(f"model.layers.{i}.{norm}.weight" for i in range(3)
                       for norm in ("input_layernorm", "post_attention_layernorm")),
                     *(() if tied else ("lm_head.weight",))}


def test_gpt2_conv1d_projections_get_sage_embeddings_and_norms_do_not(tmp_path: Path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(build_tiny_gpt2(tmp_path, layers=3))
    assert type(model.transformer.h[0].attn.c_attn).__name__ == "Conv1D"
    assert model.lm_head.weight is model.transformer.wte.weight
    sage = _sage_by_name(model)
    assert {name for name, s in sage.items() if s} == {
        f"transformer.h.{i}.{layer}.{kind}" for i in range(3)
        for layer in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
        for kind in ("weight", "bias")}
    assert {name for name, s in sage.items() if not s} == {
        "transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight",
        "transformer.ln_f.bias",
        *(f"transformer.h.{i}.{ln}.{kind}" for i in range(3) for ln in ("ln_1", "ln_2")
          for kind in ("weight", "bias"))}


# family -> (config class, model class, config overrides, the SAGE tensors of one layer)
FAMILIES: dict[str, tuple[str, str, dict[str, object], set[str]]] = {
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {},  # q/k/v carry biases
              {f"{p}.weight" for p in LLAMA_PROJECTIONS}
              | {f"self_attn.{p}_proj.bias" for p in "qkv"}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 8},  # q_norm, k_norm stay plain
              {f"{p}.weight" for p in LLAMA_PROJECTIONS}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {},
                {f"{p}.weight" for p in LLAMA_PROJECTIONS}),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", {"head_dim": 8},  # tied head
              {f"{p}.weight" for p in LLAMA_PROJECTIONS}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {"pad_token_id": 0},  # fused projections
             {"self_attn.qkv_proj.weight", "self_attn.o_proj.weight",
              "mlp.gate_up_proj.weight", "mlp.down_proj.weight"}),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_other_decoder_families(family: str):
    config_class, model_class, overrides, per_layer = FAMILIES[family]
    config = getattr(transformers, config_class)(**{**SMALL, **overrides})
    model = getattr(transformers, model_class)(config)
    sage = _sage_by_name(model)
    assert {name for name, s in sage.items() if s} == {
        f"model.layers.{i}.{name}" for i in range(3) for name in per_layer}
    plain = [name for name, s in sage.items() if not s]
    assert "model.embed_tokens.weight" in plain and "model.norm.weight" in plain
    assert all("embed" in n or "norm" in n or n == "lm_head.weight" for n in plain), plain


@pytest.mark.xfail(strict=True, reason=(
    "transformers 5 keeps a mixture-of-experts layer's experts as fused 3-D parameters in "
    "one module (MixtralExperts), which is no linear layer: the experts stay plain"))
def test_moe_experts_get_sage():
    from transformers import MixtralConfig, MixtralForCausalLM

    model = MixtralForCausalLM(MixtralConfig(**SMALL, num_local_experts=2,
                                             num_experts_per_tok=1))
    sage = _sage_by_name(model)
    assert sage["model.layers.0.self_attn.q_proj.weight"]
    assert all(s for name, s in sage.items() if ".experts." in name)


class _Unrolled(nn.Module):
    """A decoder whose layers are plain attributes, not an nn.ModuleList."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.layer0 = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))
        self.layer1 = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))
        self.head = nn.Linear(8, 10, bias=False)


def test_a_decoder_without_module_list_falls_back_to_all():
    model = _Unrolled()
    assert find_sage_scope(model, "blocks") == ("all", NO_BLOCKS_REASON)
    sage = _sage_by_name(model)
    assert all(sage.values()) and len(sage) == len(list(model.parameters()))
    groups = sage_param_groups(model)
    assert [[id(p) for p in g["params"]] for g in groups] == [
        [id(p) for p in g["params"]] for g in sage_param_groups(model, scope="all")]
    assert [g["name"] for g in groups] == ["sage_decay", "sage_no_decay"]
