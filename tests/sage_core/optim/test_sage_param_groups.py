"""sage_param_groups picks SAGE and weight decay by module type, on real architectures."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import torch
from torch import nn

from sage_core.optim import find_sage_scope, sage_param_groups
from sage_core.optim.groups import NO_BLOCKS_REASON


def tiny_bert() -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    return BertForSequenceClassification(BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, num_labels=2,
    ))


def tiny_gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2ForSequenceClassification

    return GPT2ForSequenceClassification(GPT2Config(
        vocab_size=99, n_embd=32, n_layer=2, n_head=2, n_positions=64, num_labels=2,
        pad_token_id=0,
    ))


def tiny_gpt2_lm() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(
        vocab_size=99, n_embd=32, n_layer=2, n_head=2, n_positions=64,
    ))


def tiny_llama(**overrides: object) -> nn.Module:
    """Llama's decoder layout; attention biases on, so bias handling is tested too."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = dict(
        vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        attention_bias=True, tie_word_embeddings=True,
    )
    return LlamaForCausalLM(LlamaConfig(**{**config, **overrides}))


def tiny_t5() -> nn.Module:
    from transformers import T5Config, T5ForConditionalGeneration

    return T5ForConditionalGeneration(T5Config(
        vocab_size=99, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
        decoder_start_token_id=0,
    ))


def tiny_vit() -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    return ViTForImageClassification(ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        image_size=16, patch_size=8, num_labels=2,
    ))


def _index(model: nn.Module, groups: list[dict]) -> dict[str, tuple[bool, float]]:
    """parameter name -> (sage, weight_decay), asserting each tensor is in one group."""
    by_id = {}
    for group in groups:
        assert group["params"], "empty groups are dropped"
        for p in group["params"]:
            assert id(p) not in by_id, "a tensor in two groups"
            by_id[id(p)] = (group["use_sage"], group["weight_decay"])
    names = dict(model.named_parameters())
    assert len(by_id) == len({id(p) for p in names.values() if p.requires_grad})
    return {name: by_id[id(p)] for name, p in names.items() if id(p) in by_id}


# (model builder, the exact set of parameter names that get SAGE as a regex and their count,
# patterns of names that must stay plain). Patterns cover transformers 4 and 5 naming.
CASES: dict[str, tuple[Callable[[], nn.Module], str, int, list[str]]] = {
    "bert": (
        tiny_bert,
        r"bert\.encoder\.layer\.\d+\.(attention\.self\.(query|key|value)"
        r"|attention\.output\.dense|intermediate\.dense|output\.dense)\.(weight|bias)",
        2 * 6 * 2,
        [r"bert\.embeddings\.word_embeddings\.weight", r"bert\.embeddings\.LayerNorm\.weight",
         r"bert\.encoder\.layer\.0\.output\.LayerNorm\.(weight|bias)",
         r"bert\.pooler\.dense\.weight", r"classifier\.(weight|bias)"],
    ),
    "gpt2": (
        tiny_gpt2,
        r"transformer\.h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.(weight|bias)",
        2 * 4 * 2,
        [r"transformer\.wte\.weight", r"transformer\.wpe\.weight", r"transformer\.h\.0\.ln_1\..*",
         r"transformer\.ln_f\.weight", r"score\.weight"],
    ),
    "gpt2-lm": (
        tiny_gpt2_lm,
        r"transformer\.h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.(weight|bias)",
        2 * 4 * 2,
        [r"transformer\.wte\.weight", r"transformer\.wpe\.weight", r"transformer\.h\.0\.ln_1\..*",
         r"transformer\.h\.1\.ln_2\..*", r"transformer\.ln_f\.(weight|bias)"],
    ),
    "llama": (
        tiny_llama,
        r"model\.layers\.\d+\.(self_attn\.[qkvo]_proj\.(weight|bias)"
        r"|mlp\.(gate|up|down)_proj\.weight)",
        2 * (4 * 2 + 3),
        [r"model\.embed_tokens\.weight", r"model\.layers\.\d+\.input_layernorm\.weight",
         r"model\.layers\.\d+\.post_attention_layernorm\.weight", r"model\.norm\.weight"],
    ),
    "t5": (
        tiny_t5,
        r"(encoder|decoder)\.block\.\d+\.layer\.\d+\.(SelfAttention\.[qkvo]"
        r"|EncDecAttention\.[qkvo]|DenseReluDense\.w[io])\.weight",
        2 * (4 + 2) + 2 * (4 + 4 + 2),
        [r"shared\.weight", r".*relative_attention_bias\.weight",
         r"encoder\.block\.0\.layer\.0\.layer_norm\.weight", r"encoder\.final_layer_norm\.weight"],
    ),
    "vit": (
        tiny_vit,
        r"vit\.(encoder\.layer|layers)\.\d+\.(attention\.(q_proj|k_proj|v_proj|o_proj)"
        r"|attention\.attention\.(query|key|value)|attention\.output\.dense"
        r"|intermediate\.dense|output\.dense|mlp\.fc[12])\.(weight|bias)",
        2 * 6 * 2,
        [r"vit\.embeddings\.cls_token", r"vit\.embeddings\.position_embeddings",
         r"vit\.embeddings\.patch_embeddings\.projection\.weight", r"vit\.layernorm\.weight",
         r"vit\.(encoder\.layer|layers)\.0\.layernorm_before\.weight", r"classifier\.weight"],
    ),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request: pytest.FixtureRequest) -> tuple[nn.Module, str, int, list[str]]:
    build, sage_pattern, sage_count, plain_patterns = CASES[request.param]
    torch.manual_seed(0)
    return build(), sage_pattern, sage_count, plain_patterns


def test_blocks_scope_puts_block_linears_under_sage(case: tuple[nn.Module, str, int, list]):
    model, sage_pattern, sage_count, plain_patterns = case
    index = _index(model, sage_param_groups(model, weight_decay=0.01))
    sage_names = {name for name, (use_sage, _) in index.items() if use_sage}
    assert sage_names == {name for name in index if re.fullmatch(sage_pattern, name)}
    assert len(sage_names) == sage_count
    for pattern in plain_patterns:
        matched = [name for name in index if re.fullmatch(pattern, name)]
        assert matched, pattern
        assert not any(index[name][0] for name in matched), pattern
    # every linear layer inside a block is SAGE, and nothing else is
    blocks = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    assert blocks
    for name, (use_sage, _) in index.items():
        owner = model.get_submodule(name.rsplit(".", 1)[0])
        is_linear = isinstance(owner, nn.Linear) or type(owner).__name__ == "Conv1D"
        in_block = any(
            owner is m for lst in blocks for child in lst for m in child.modules()
        )
        assert use_sage == (is_linear and in_block), name


def test_biases_norms_and_vectors_get_no_weight_decay(case: tuple[nn.Module, str, int, list]):
    model, _, _, _ = case
    index = _index(model, sage_param_groups(model, weight_decay=0.01))
    params = dict(model.named_parameters())
    for name, (_, wd) in index.items():
        owner = model.get_submodule(name.rsplit(".", 1)[0])
        exempt = name.endswith("bias") or "Norm" in type(owner).__name__ or params[name].ndim < 2
        assert wd == (0.0 if exempt else 0.01), name


def test_all_scope_puts_every_trainable_tensor_under_sage(case: tuple[nn.Module, str, int, list]):
    model, _, _, _ = case
    groups = sage_param_groups(model, weight_decay=0.05, scope="all")
    assert {g["name"] for g in groups} == {"sage_decay", "sage_no_decay"}
    index = _index(model, groups)
    assert all(use_sage for use_sage, _ in index.values())
    assert {wd for _, wd in index.values()} == {0.0, 0.05}


def test_gpt2_conv1d_is_recognised():
    from transformers.pytorch_utils import Conv1D

    from sage_core.optim import is_linear_layer

    assert is_linear_layer(Conv1D(4, 3))
    assert is_linear_layer(nn.Linear(2, 2))
    assert not is_linear_layer(nn.Conv1d(2, 2, 1))


def test_frozen_params_and_empty_groups_are_skipped():
    model = tiny_bert()
    for name, p in model.named_parameters():
        if not name.startswith("bert.encoder."):
            p.requires_grad_(False)
    model.bert.encoder.layer[0].attention.self.query.weight.requires_grad_(False)
    groups = sage_param_groups(model)
    frozen = {id(p) for p in model.parameters() if not p.requires_grad}
    assert all(id(p) not in frozen for g in groups for p in g["params"])
    # only LayerNorms remain outside SAGE in the encoder: no plain decay group
    assert [g["name"] for g in groups] == ["sage_decay", "sage_no_decay", "plain_no_decay"]


@pytest.mark.parametrize("build, embedding", [
    (tiny_t5, "shared"), (tiny_llama, "model.embed_tokens"), (tiny_gpt2_lm, "transformer.wte"),
])
def test_a_tied_lm_head_appears_once_and_plain(build: Callable[[], nn.Module], embedding: str):
    model = build()
    tied = model.get_submodule(embedding).weight
    assert model.lm_head.weight is tied
    groups = sage_param_groups(model)
    _index(model, groups)
    owners = [g for g in groups for p in g["params"] if p is tied]
    assert len(owners) == 1 and owners[0]["name"] == "plain_decay"


def test_an_untied_lm_head_is_plain_and_decays():
    model = tiny_llama(tie_word_embeddings=False)
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    groups = sage_param_groups(model)
    _index(model, groups)
    assert any(p is model.lm_head.weight for g in groups if g["name"] == "plain_decay"
               for p in g["params"])


def test_a_model_without_blocks_falls_back_to_all():
    model = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3), nn.Linear(3, 1))
    assert find_sage_scope(model, "blocks") == ("all", NO_BLOCKS_REASON)
    assert "sage_scope=all" in NO_BLOCKS_REASON
    groups = sage_param_groups(model, weight_decay=0.01)
    assert groups == sage_param_groups(model, weight_decay=0.01, scope="all")
    assert [g["name"] for g in groups] == ["sage_decay", "sage_no_decay"]
    # a ModuleList of norms alone is no block to choose linear layers from
    norms = nn.ModuleDict({"lists": nn.ModuleList([nn.LayerNorm(3)]), "head": nn.Linear(3, 1)})
    assert find_sage_scope(norms, "blocks") == ("all", NO_BLOCKS_REASON)


def test_models_with_blocks_keep_their_scope(case: tuple[nn.Module, str, int, list]):
    model, _, _, _ = case
    assert find_sage_scope(model, "blocks") == ("blocks", None)
    assert find_sage_scope(model, "all") == ("all", None)
    assert find_sage_scope(nn.Linear(2, 2), "all") == ("all", None)


def test_invalid_scope_is_rejected():
    with pytest.raises(ValueError, match="Invalid scope: 'layers'"):
        sage_param_groups(nn.Linear(2, 2), scope="layers")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Invalid scope: 'layers'"):
        find_sage_scope(nn.Linear(2, 2), scope="layers")  # type: ignore[arg-type]
