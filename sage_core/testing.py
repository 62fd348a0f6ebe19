"""Tiny random models for tests and examples: no download, built in well under a second.

`build_tiny_model(folder)` writes a Hugging Face folder (config + weights + tokenizer) for a
2-layer, 64-wide BERT with a small WordPiece vocabulary, which the catalog serves like any
other base model when the folder sits under SAGETRAIN_MODELS_DIR.

`build_tiny_llama(folder)` and `build_tiny_gpt2(folder)` write decoder-only causal LMs with a
word-level tokenizer and a chat template in the style of their family (Llama 3 headers,
ChatML). Neither template has `{% generation %}` markers, as most real ones lack them.

`build_tiny_t5(folder, words=number_words())` writes an encoder-decoder for seq2seq, whose
word-level vocabulary covers `number_pairs`: English -> French number phrases (num2words).

`build_tiny_vit(folder)` writes a 2-layer, 64-wide ViT for 32x32 images with its image
processor; `digits_images()` turns scikit-learn's digits into PNGs, which
`write_digits_zip` and `write_digits_jsonl` write as the two image-classification layouts.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

_WORDS = (
    "the a an is are was be to of and in it for on with as this that you i not "
    "free win prize call now text stop cash claim urgent reply offer "
    "good bad great terrible love hate movie film ok fine yes no hello see later home "
).split()


def tiny_vocab() -> list[str]:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    return specials + chars + [f"##{c}" for c in string.ascii_lowercase + string.digits] + _WORDS


def build_tiny_model(folder: Path, *, layers: int = 2, hidden: int = 64, seed: int = 0) -> Path:
    """Save a randomly initialised tiny BERT (base model, no head) with its tokenizer."""
    import torch

    # transformers 5 serves BertTokenizerFast lazily, out of sight of its type stubs
    from transformers import BertConfig, BertModel, BertTokenizerFast  # type: ignore[attr-defined]

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(tiny_vocab()) + "\n")
    # positional: `vocab_file` in transformers 4, `vocab` (a path or a dict) in 5
    tokenizer = BertTokenizerFast(str(vocab_file), do_lower_case=True)
    tokenizer.save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(tiny_vocab()), hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=2, intermediate_size=hidden * 2, max_position_embeddings=512,
    )
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(folder)
    return folder


# Enough words for chat examples; tests that need more pass `words`.
_CHAT_WORDS = (
    "system user assistant you are a helpful bot hello hi how is the weather today it sunny "
    "rainy what time now thanks thank good bye see later yes no ok sure please tell me joke "
    "why did chicken cross road to get other side answer question one two three four five "
    "translate into french bonjour merci capital of paris i am fine and , . ! ?"
).split()

_LLAMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

_CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _word_level_tokenizer(specials: list[str], words: Iterable[str], *, unk: str,
                          prepend: str | None) -> object:
    """A `tokenizers.Tokenizer` over whole words and punctuation; the specials are added
    tokens, so the template's control tokens are never split. `prepend` starts every
    encoding made with special tokens, as Llama's BOS does."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel

    vocab: dict[str, int] = {}
    for token in [*specials, *_CHAT_WORDS, *words]:
        vocab.setdefault(token, len(vocab))
    tokenizer = Tokenizer(WordLevel(vocab, unk_token=unk))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens(specials)
    if prepend is not None:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{prepend} $A", pair=f"{prepend} $A $B",
            special_tokens=[(prepend, vocab[prepend])],
        )
    return tokenizer


def _save_causal_lm(folder: Path, *, specials: list[str], words: Iterable[str], template: str,
                    bos: str, eos: str, pad: str, unk: str, prepend_bos: bool,
                    make_model: object, seed: int) -> Path:
    import torch
    from transformers import PreTrainedTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_word_level_tokenizer(specials, words, unk=unk,
                                               prepend=bos if prepend_bos else None),
        bos_token=bos, eos_token=eos, pad_token=pad, unk_token=unk,
    )
    tokenizer.chat_template = template
    tokenizer.save_pretrained(folder)
    ids = {name: tokenizer.convert_tokens_to_ids(token)
           for name, token in (("bos", bos), ("eos", eos), ("pad", pad))}
    torch.manual_seed(seed)
    model = make_model(len(tokenizer), ids)  # type: ignore[operator]
    model.save_pretrained(folder)
    return folder


def build_tiny_llama(folder: Path, *, words: Iterable[str] = (), layers: int = 2,
                     hidden: int = 64, seed: int = 0) -> Path:
    """Save a randomly initialised tiny Llama causal LM with a word-level tokenizer and a
    Llama-3-style chat template (header tokens, `<|eot_id|>` ending every turn, which is
    also the EOS, as in Llama 3 Instruct). As Llama's, the tokenizer starts what it encodes
    with BOS unless told `add_special_tokens=False`. `words` extend the vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    def make_model(vocab_size: int, ids: dict[str, int]) -> LlamaForCausalLM:
        config = LlamaConfig(
            vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2,
            num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
            max_position_embeddings=2048, bos_token_id=ids["bos"], eos_token_id=ids["eos"],
            pad_token_id=ids["pad"],
        )
        return LlamaForCausalLM(config)

    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                "<|end_header_id|>", "<|eot_id|>", "<|finetune_right_pad_id|>", "<unk>"]
    return _save_causal_lm(
        folder, specials=specials, words=words, template=_LLAMA_TEMPLATE,
        bos="<|begin_of_text|>", eos="<|eot_id|>", pad="<|finetune_right_pad_id|>",
        unk="<unk>", prepend_bos=True, make_model=make_model, seed=seed,
    )


def build_tiny_gpt2(folder: Path, *, words: Iterable[str] = (), layers: int = 2,
                    hidden: int = 64, seed: int = 0) -> Path:
    """Save a randomly initialised tiny GPT-2 causal LM with a word-level tokenizer and a
    ChatML chat template (`<|im_start|>role ... <|im_end|>`). As in GPT-2, BOS and EOS are
    both `<|endoftext|>`; the turn ends with `<|im_end|>`, which is not the EOS, as in the
    ChatML models. As GPT-2's, the tokenizer adds no special tokens to what it encodes.
    `words` extend the vocabulary."""
    from transformers import GPT2Config, GPT2LMHeadModel

    def make_model(vocab_size: int, ids: dict[str, int]) -> GPT2LMHeadModel:
        config = GPT2Config(
            vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=2, n_positions=1024,
            bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"],
        )
        return GPT2LMHeadModel(config)

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>", "<unk>"]
    return _save_causal_lm(
        folder, specials=specials, words=words, template=_CHATML_TEMPLATE,
        bos="<|endoftext|>", eos="<|endoftext|>", pad="<|pad|>", unk="<unk>",
        prepend_bos=False, make_model=make_model, seed=seed,
    )


def build_tiny_vit(folder: Path, *, image_size: int = 32, patch_size: int = 8,
                   layers: int = 2, hidden: int = 64, seed: int = 0) -> Path:
    """Save a randomly initialised tiny ViT (base model, no head) with its image processor
    (resize to `image_size`, RGB normalised to [-1, 1])."""
    import torch
    from transformers import ViTConfig, ViTModel
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ViTImageProcessorPil(size={"height": image_size, "width": image_size},
                         image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(folder)
    config = ViTConfig(image_size=image_size, patch_size=patch_size, num_channels=3,
                       hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                       intermediate_size=hidden * 2)
    torch.manual_seed(seed)
    ViTModel(config, add_pooling_layer=False).save_pretrained(folder)
    return folder


def digits_images(size: int = 32) -> list[tuple[bytes, str]]:
    """scikit-learn's digits (1,797 real 8x8 grayscale scans of handwritten digits, shipped
    with the package) as (PNG bytes, label) pairs, upscaled to `size` x `size` RGB."""
    import io

    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    out = []
    for pixels, label in zip(digits.images, digits.target, strict=True):
        gray = Image.fromarray((pixels * (255 / 16)).astype(np.uint8), mode="L")
        image = gray.resize((size, size), Image.Resampling.BILINEAR).convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        out.append((buffer.getvalue(), str(int(label))))
    return out


def write_digits_zip(path: Path, images: list[tuple[bytes, str]]) -> Path:
    """`images` as an ImageFolder zip: digits/<label>/<n>.png."""
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        for n, (data, label) in enumerate(images):
            archive.writestr(f"digits/{label}/{n:04d}.png", data)
    return Path(path)


def write_digits_jsonl(path: Path, images: list[tuple[bytes, str]]) -> Path:
    """`images` as JSONL rows {"image": "data:image/png;base64,...", "label"}."""
    import base64
    import json

    with open(path, "w") as out:
        for data, label in images:
            url = "data:image/png;base64," + base64.b64encode(data).decode()
            out.write(json.dumps({"image": url, "label": label}) + "\n")
    return Path(path)


@contextmanager
def throwaway_postgres(admin_url: str, prefix: str) -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database for one test or bench run, dropped (with
    FORCE) afterwards. `admin_url` names an existing database to connect through; a failure
    to reach it raises at entry, before anything is created."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from sage_core.db.session import dispose_engines

    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{secrets.token_hex(5)}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception:
        admin.dispose()
        raise
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        # pooled connections into the database would make DROP wait for them
        dispose_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# --- seq2seq: English -> French number phrases, and a tiny T5 that knows their words --------
def number_pairs(n: int, *, seed: int = 0, high: int = 999) -> list[dict[str, str]]:
    """`n` translation rows {"source", "target"}: a number from 0 to `high` in English words
    and in French ("three hundred and twelve" -> "trois cent douze"), drawn by `seed`."""
    import random

    from num2words import num2words

    rng = random.Random(seed)
    numbers = [rng.randint(0, high) for _ in range(n)]
    return [{"source": num2words(k, lang="en"), "target": num2words(k, lang="fr")}
            for k in numbers]


def number_words(high: int = 999) -> list[str]:
    """Every word and punctuation mark ("-") of the number phrases from 0 to `high` in both
    languages, split as a whitespace pre-tokenizer splits them."""
    import re

    from num2words import num2words

    words: dict[str, None] = {}
    for k in range(high + 1):
        for lang in ("en", "fr"):
            words.update(dict.fromkeys(re.findall(r"\w+|[^\w\s]+", num2words(k, lang=lang))))
    return list(words)


def build_tiny_t5(folder: Path, *, words: Iterable[str] = (), layers: int = 2,
                  hidden: int = 64, seed: int = 0) -> Path:
    """Save a randomly initialised tiny T5 (encoder-decoder, `AutoModelForSeq2SeqLM`) with a
    word-level tokenizer that ends what it encodes with `</s>`, as T5's does; pad `<pad>`
    (id 0) is also the decoder's start token. `words` extend the vocabulary (see
    `number_words`)."""
    import torch
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    specials = ["<pad>", "</s>", "<unk>"]
    backend = _word_level_tokenizer(specials, words, unk="<unk>", prepend=None)
    backend.post_processor = processors.TemplateProcessing(  # type: ignore[attr-defined]
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>",
                                        pad_token="<pad>", unk_token="<unk>",
                                        model_max_length=512)
    tokenizer.save_pretrained(folder)
    config = T5Config(
        vocab_size=len(tokenizer), d_model=hidden, d_ff=hidden * 2, d_kv=hidden // 2,
        num_layers=layers, num_decoder_layers=layers, num_heads=2, dropout_rate=0.0,
        pad_token_id=0, eos_token_id=1,
    )
    torch.manual_seed(seed)
    T5ForConditionalGeneration(config).save_pretrained(folder)
    return folder
