"""SAGE's parameter groups on encoder-decoders: tiny random T5, BART, Marian and a BERT2BERT
`EncoderDecoderModel`. Every linear layer of the encoder's and the decoder's blocks gets
SAGE, cross-attention included; embeddings, norms and the LM head (tied or not) do not.
groups.py needs no change for them: T5's nested ModuleLists (block -> layer) are inside a
ModuleList all the same, and every LM head sits outside the blocks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from sage_core.optim.groups import sage_param_groups
from sage_core.testing import build_tiny_model


def _t5() -> nn.Module:
    from transformers import T5Config, T5ForConditionalGeneration

    return T5ForConditionalGeneration(T5Config(
        vocab_size=50, d_model=16, d_ff=32, d_kv=8, num_layers=2, num_decoder_layers=2,
        num_heads=2, tie_word_embeddings=False))


def _bart() -> nn.Module:
    from transformers import BartConfig, BartForConditionalGeneration

    return BartForConditionalGeneration(BartConfig(
        vocab_size=50, d_model=16, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
        decoder_ffn_dim=32, max_position_embeddings=64))


def _marian() -> nn.Module:
    from transformers import MarianConfig, MarianMTModel

    return MarianMTModel(MarianConfig(
        vocab_size=50, d_model=16, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
        decoder_ffn_dim=32, max_position_embeddings=64, pad_token_id=49,
        decoder_start_token_id=49))


def _bert2bert(tmp: Path) -> nn.Module:
    from transformers import EncoderDecoderModel

    folder = build_tiny_model(tmp / "tiny-bert", hidden=16)
    return EncoderDecoderModel.from_encoder_decoder_pretrained(str(folder), str(folder))


# (builder, cross-attention linear names, the linear layers outside the blocks: plain)
CASES: dict[str, tuple[Callable[[Path], nn.Module], tuple[str, ...], tuple[str, ...]]] = {
    "t5": (lambda _: _t5(), ("EncDecAttention.q", "EncDecAttention.k", "EncDecAttention.v",
                             "EncDecAttention.o"), ("lm_head",)),
    "bart": (lambda _: _bart(), ("encoder_attn.q_proj", "encoder_attn.k_proj",
                                 "encoder_attn.v_proj", "encoder_attn.out_proj"),
             ("lm_head",)),
    "marian": (lambda _: _marian(), ("encoder_attn.q_proj", "encoder_attn.k_proj",
                                     "encoder_attn.v_proj", "encoder_attn.out_proj"),
               ("lm_head",)),
    "bert2bert": (_bert2bert, ("crossattention.self.query", "crossattention.self.key",
                               "crossattention.self.value", "crossattention.output.dense"),
                  ("decoder.cls.", "encoder.pooler.")),  # the pooler: unused, plain
}


@pytest.mark.parametrize("case", list(CASES))
def test_block_linears_of_encoder_and_decoder_get_sage(case: str, tmp_path: Path) -> None:
    build, cross_attention, heads = CASES[case]
    torch.manual_seed(0)
    model = build(tmp_path)
    groups = sage_param_groups(model, weight_decay=0.01)
    sage = {id(p) for g in groups if g["use_sage"] for p in g["params"]}
    plain = {id(p) for g in groups if not g["use_sage"] for p in g["params"]}
    assert not sage & plain

    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    in_heads = {name for name in linears if any(name.startswith(h) or f".{h}" in name
                                                for h in heads)}
    block_linears = {name: m for name, m in linears.items() if name not in in_heads}
    for side in ("encoder", "decoder"):  # both halves have their blocks' layers in SAGE
        assert any(side in name.split(".")[:2] for name in block_linears), side
    for name, module in block_linears.items():
        assert all(id(p) in sage for p in module.parameters()), name
    for suffix in cross_attention:
        hits = [n for n in block_linears if n.endswith(suffix)]
        assert len(hits) == 2, (suffix, hits)  # one per decoder layer

    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding) or "Norm" in type(module).__name__ \
                or name in in_heads:
            assert all(id(p) not in sage for p in module.parameters(recurse=False)), name
    head = model.get_output_embeddings()  # type: ignore[operator]
    assert head is not None and id(head.weight) not in sage
    # each trainable tensor once, tied ones included (Marian's sinusoidal positions are frozen)
    assert len(sage) + len(plain) == len({id(p) for p in model.parameters() if p.requires_grad})
