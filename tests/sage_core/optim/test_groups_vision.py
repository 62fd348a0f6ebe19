"""sage_param_groups on the image classifiers image-classification jobs train.

- ViT: every linear layer of every encoder block (attention query/key/value/output, MLP)
  gets SAGE; the patch embedding's conv, the CLS token and position embeddings, the norms
  and the classifier head do not.
- ConvNeXt: by the same rule (linear layers inside repeated blocks, by module type), each
  block's pointwise Linear layers get SAGE; its depthwise conv, norms and layer scale, the
  stem, the downsampling convs and the head do not. Convolutions are left plain on purpose:
  the rule is SAGE.md's (the blocks' linear layers), and a conv is a different kind of layer.
- ResNet has no linear layer inside a block (only convs and batch norms): scope "blocks"
  finds nothing to step, so find_sage_scope falls back to "all" (and the job says so in a
  warning event) rather than training with SAGE on nothing.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from sage_core.optim import find_sage_scope, sage_param_groups
from sage_core.optim.groups import NO_BLOCKS_REASON
from sage_core.testing import build_tiny_vit

# transformers 5's names
VIT_LINEARS = ("attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj",
               "mlp.fc1", "mlp.fc2")


def _sage_by_name(model: nn.Module) -> dict[str, bool]:
    names = {id(p): name for name, p in model.named_parameters()}
    grouped = [(names[id(p)], g["use_sage"]) for g in sage_param_groups(model) for p in g["params"]]
    assert len(grouped) == len({name for name, _ in grouped}) == len(names)
    return dict(grouped)


def test_vit_every_block_linear_gets_sage(tmp_path: Path) -> None:
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(
        build_tiny_vit(tmp_path, layers=3), num_labels=10)
    assert find_sage_scope(model, "blocks") == ("blocks", None)
    sage = _sage_by_name(model)
    assert {name for name, s in sage.items() if s} == {
        f"vit.layers.{i}.{layer}.{kind}" for i in range(3) for layer in VIT_LINEARS
        for kind in ("weight", "bias")}
    assert {name for name, s in sage.items() if not s} == {
        "vit.embeddings.cls_token", "vit.embeddings.position_embeddings",
        "vit.embeddings.patch_embeddings.projection.weight",
        "vit.embeddings.patch_embeddings.projection.bias",
        "vit.layernorm.weight", "vit.layernorm.bias", "classifier.weight", "classifier.bias",
        *(f"vit.layers.{i}.{norm}.{kind}" for i in range(3)
          for norm in ("layernorm_before", "layernorm_after") for kind in ("weight", "bias"))}


def test_convnext_pointwise_linears_get_sage_convs_do_not() -> None:
    from transformers import ConvNextConfig, ConvNextForImageClassification

    model = ConvNextForImageClassification(ConvNextConfig(
        num_channels=3, hidden_sizes=[8, 16], depths=[1, 2], num_stages=2, num_labels=10,
        image_size=32))
    assert find_sage_scope(model, "blocks") == ("blocks", None)
    sage = _sage_by_name(model)
    layers = ["convnext.encoder.stages.0.layers.0", *(f"convnext.encoder.stages.1.layers.{i}"
                                                       for i in range(2))]
    assert {name for name, s in sage.items() if s} == {
        f"{layer}.{pw}.{kind}" for layer in layers for pw in ("pwconv1", "pwconv2")
        for kind in ("weight", "bias")}
    plain = {name for name, s in sage.items() if not s}
    assert {f"{layer}.dwconv.weight" for layer in layers} <= plain
    assert {f"{layer}.layer_scale_parameter" for layer in layers} <= plain
    assert {"convnext.embeddings.patch_embeddings.weight", "classifier.weight",
            "convnext.encoder.stages.1.downsampling_layer.1.weight"} <= plain


def test_resnet_has_no_block_linears_so_blocks_means_all() -> None:
    from transformers import ResNetConfig, ResNetForImageClassification

    model = ResNetForImageClassification(ResNetConfig(
        num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
        layer_type="basic", num_labels=10))
    assert find_sage_scope(model, "blocks") == ("all", NO_BLOCKS_REASON)
    sage = _sage_by_name(model)
    assert all(sage.values()) and "classifier.1.weight" in sage
