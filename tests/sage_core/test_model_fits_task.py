"""`catalog.check_fits_task`: the one rule, from a model's config, that says which tasks a
base model can train (the API applies it when a job is created, the engine before it loads
the model). Checked on the configs of real architectures, built tiny."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sage_core.catalog import check_fits_task
from sage_core.errors import InvalidSpecError
from sage_core.testing import (
    build_tiny_gpt2,
    build_tiny_llama,
    build_tiny_model,
    build_tiny_t5,
    build_tiny_vit,
)

BUILDERS = {"bert": build_tiny_model, "llama": build_tiny_llama, "gpt2": build_tiny_gpt2,
            "t5": build_tiny_t5, "vit": build_tiny_vit}
TASKS = ("text-classification", "chat", "completion", "seq2seq", "image-classification")
# (model, task, architecture) -> fits
FITS = {
    "bert": {"text-classification"},
    "llama": {"text-classification", "chat", "completion"},
    "gpt2": {"text-classification", "chat", "completion"},
    "t5": {"text-classification", "seq2seq"},
    "vit": {"image-classification"},
}


@pytest.fixture(scope="module")
def configs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, object]]:
    root = tmp_path_factory.mktemp("fits")
    return {name: json.loads((build(root / name) / "config.json").read_text())
            for name, build in BUILDERS.items()}


def _fits(config: dict[str, object], task: str, architecture: str = "auto") -> bool:
    try:
        check_fits_task(config, "m", task, architecture)
    except InvalidSpecError:
        return False
    return True


@pytest.mark.parametrize("model", list(BUILDERS))
def test_each_architecture_trains_its_tasks_only(configs: dict[str, dict[str, object]],
                                                 model: str) -> None:
    assert {t for t in TASKS if _fits(configs[model], t)} == FITS[model]


def test_bert2bert_is_seq2seq_from_an_encoder_only(configs: dict[str, dict[str, object]]) -> None:
    assert _fits(configs["bert"], "seq2seq", "encoder-decoder")
    assert not _fits(configs["t5"], "seq2seq", "encoder-decoder")
    with pytest.raises(InvalidSpecError, match='architecture "encoder-decoder"') as info:
        check_fits_task(configs["bert"], "tiny-bert", "seq2seq", "auto")
    assert info.value.param == "hyperparameters.architecture"
    assert "tiny-bert" in info.value.message


def test_a_chat_job_names_the_heads_it_found(configs: dict[str, dict[str, object]],
                                            tmp_path: Path) -> None:
    with pytest.raises(InvalidSpecError, match="BertModel") as info:
        check_fits_task(configs["bert"], "all-MiniLM", "chat", "auto")
    assert info.value.param == "model"
