"""The sequence-to-sequence task, "seq2seq" (translation, summarisation): an encoder-decoder
learns each example's target from its source.

Choices a caller may rely on:
- The model is the base folder's own seq2seq head (`AutoModelForSeq2SeqLM`: T5, BART,
  Marian, mBART) with `architecture` "auto"; an encoder-only folder (BERT, MiniLM) is then
  refused, naming "encoder-decoder". With `architecture` "encoder-decoder", an
  `EncoderDecoderModel` is warm-started from the encoder folder twice (BERT2BERT, Rothe et
  al. 2020): the decoder copy gets causal self-attention and new cross-attention; decoding
  starts at CLS (BOS), ends at SEP (EOS).
- Sources are truncated at max_seq_length; targets too, ending with the EOS the tokenizer
  adds (`text_target=`). A target whose first token is the decoder's start token (BERT's
  CLS) loses it: the decoder is fed it, never asked to predict it. Truncations are
  reported as warnings.
- Batches: the source padded on the right with its attention mask; `decoder_input_ids`
  are the labels shifted right after the start token (made here, not by the model, whose
  own loss is not used); labels are padded with IGNORE_INDEX.
- Every example weighs equally: its loss is the mean cross-entropy over its target tokens
  (fp32), and the loop averages examples. valid_mean_token_accuracy is teacher-forced.
- At each evaluation the whole validation file is translated (greedy, or beam search with
  `num_beams`), in batches, at most max_seq_length new tokens and no more than the batch's
  longest reference plus GENERATION_EXTRA_TOKENS: valid_bleu (the main metric) and
  valid_chrf are sacrebleu's corpus BLEU and chrF against the references as the tokenizer
  decodes them (as Hugging Face's translation example does). The first SAMPLE_COUNT
  validation examples' outputs become sample events.
- `gradient_checkpointing` (true, or "auto" for a model over 1B parameters on a GPU)
  applies to the encoder and the decoder.
- A saved model loads with `AutoModelForSeq2SeqLM.from_pretrained` (which maps an
  "encoder-decoder" config to `EncoderDecoderModel`), with its tokenizer; its
  generation_config names the start, EOS and pad tokens, num_beams, and a max_length of
  max_seq_length.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from sage_core.datafiles import Dataset, Seq2SeqExample
from sage_core.names import MAIN_METRIC
from sage_core.schemas import ResolvedHyperparameters
from sage_core.training.chat_format import IGNORE_INDEX
from sage_core.training.tasks import (
    Batch,
    Encoded,
    PerTokenLabels,
    Report,
    TokenizedTask,
    ignore_report,
    length_mask,
    pad_rows,
    padded_width,
    quiet_transformers,
)

if TYPE_CHECKING:
    from sage_core.training.device import Placement

SAMPLE_COUNT = 3  # validation examples shown as events at each evaluation
GENERATION_EXTRA_TOKENS = 16  # beyond the batch's longest reference
SAMPLE_SOURCE_CHARS = 500


class Seq2SeqTask(PerTokenLabels, TokenizedTask):
    name = "seq2seq"
    main_metric, greater_is_better = MAIN_METRIC["seq2seq"]

    def __init__(self, hp: ResolvedHyperparameters | None = None) -> None:
        super().__init__(hp)
        self.decoder_start_id = 0
        self._samples: list[tuple[str, str, str]] = []  # (source, reference, output)

    @property
    def _encoder_decoder(self) -> bool:
        return self.hp is not None and self.hp.architecture == "encoder-decoder"

    @property
    def _num_beams(self) -> int:
        return self.hp.num_beams if self.hp is not None else 1

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.tokenizer.eos_token_id)

    @property
    def eos_id(self) -> int:
        """EOS, or BERT's SEP, which ends what its tokenizer encodes."""
        eos = self.tokenizer.eos_token_id
        if eos is None:
            eos = self.tokenizer.sep_token_id
        return int(eos)

    # ------------------------------------------------------------ data
    def prepare(self, train: Dataset, validation: Dataset | None, *, train_name: str,
                validation_name: str | None) -> None:
        return None

    def load_processor(self, path: str) -> None:
        from transformers import AutoConfig

        super().load_processor(path)
        if self._encoder_decoder:
            start = self.tokenizer.cls_token_id
            if start is None:
                start = self.tokenizer.bos_token_id
        else:
            start = getattr(AutoConfig.from_pretrained(path), "decoder_start_token_id", None)
        self.decoder_start_id = int(start if start is not None else self.pad_id)

    def encode(self, dataset: Dataset, max_length: int, *, param: str = "training_file",
               report: Report = ignore_report) -> list[Encoded]:
        file = param.replace("_", " ")
        examples = cast(list[Seq2SeqExample], dataset.examples)
        sources = self.tokenizer([e.source for e in examples],
                                 return_attention_mask=False)["input_ids"]
        targets = self.tokenizer(text_target=[e.target for e in examples],
                                 return_attention_mask=False)["input_ids"]
        items = []
        truncated = truncated_targets = 0
        for source, labels in zip(sources, targets, strict=True):
            if labels and labels[0] == self.decoder_start_id:
                labels = labels[1:]
            truncated += len(source) > max_length
            truncated_targets += len(labels) > max_length
            items.append(Encoded({"input_ids": self._truncate(source, max_length)},
                                 self._truncate(labels, max_length)))
        total = len(examples)
        for count, what in ((truncated, "sources"), (truncated_targets, "targets")):
            if count:
                report("warning", f"{count} of {total} {what} in the {file} are longer than "
                                  f"max_seq_length ({max_length} tokens) and were truncated")
        return items

    def _truncate(self, ids: list[int], max_length: int) -> list[int]:
        """The first `max_length` ids, ending with the special token (EOS, SEP) that ended
        them, as the tokenizer's own truncation does."""
        ids = list(ids)
        if len(ids) <= max_length:
            return ids
        if ids[-1] in self.tokenizer.all_special_ids:
            return ids[:max_length - 1] + ids[-1:]
        return ids[:max_length]

    def collate(self, items: Sequence[Encoded], pad_to_multiple_of: int = 1) -> Batch:
        lengths = [self.example_length(it) for it in items]
        width = padded_width(lengths, pad_to_multiple_of)
        labels = [cast(list[int], it.target) for it in items]
        label_width = padded_width([len(x) for x in labels], pad_to_multiple_of)
        inputs = {
            "input_ids": pad_rows([it.features["input_ids"] for it in items], width,
                                  self.pad_id),
            "attention_mask": length_mask(lengths, width),
            "decoder_input_ids": pad_rows([[self.decoder_start_id, *x[:-1]] for x in labels],
                                          label_width, self.pad_id),
        }
        targets = pad_rows(labels, label_width, IGNORE_INDEX)
        return Batch(inputs, targets, len(items), sum(lengths) + sum(map(len, labels)))

    # ------------------------------------------------------------ model
    def _load(self, path: str | Path) -> Any:  # a PreTrainedModel
        from transformers import AutoModelForSeq2SeqLM

        with quiet_transformers():
            return AutoModelForSeq2SeqLM.from_pretrained(str(path), dtype=torch.float32)

    def build_model(self, base_path: str) -> torch.nn.Module:
        # that the base model fits `architecture` is checked before (catalog.check_fits_task)
        if not self._encoder_decoder:
            return cast(torch.nn.Module, self._load(base_path))
        return self._warm_start(base_path)

    def _warm_start(self, base_path: str) -> torch.nn.Module:
        from transformers import EncoderDecoderModel

        with quiet_transformers():
            model = EncoderDecoderModel.from_encoder_decoder_pretrained(
                base_path, base_path, dtype=torch.float32)
        config = model.config
        config.decoder_start_token_id = self.decoder_start_id
        config.pad_token_id = self.pad_id
        config.eos_token_id = self.eos_id
        config.vocab_size = config.decoder.vocab_size
        return cast(torch.nn.Module, model)

    def load_model(self, folder: Path) -> torch.nn.Module:
        return cast(torch.nn.Module, self._load(folder))

    def prepare_model(self, model: torch.nn.Module, device: torch.device, *,
                      shards: int = 1) -> None:
        """Gradient checkpointing as `gradient_checkpointing` says (memory.py). The memory
        check before the first step is the causal LMs' alone: its estimate counts one
        stack of layers."""
        from sage_core.training import memory

        if self.hp is not None and memory.gradient_checkpointing_wanted(
                self.hp.gradient_checkpointing, model, device):
            memory.enable_gradient_checkpointing(model)

    def save_model(self, model: torch.nn.Module, folder: Path, *,
                   state_dict: dict[str, torch.Tensor] | None = None) -> None:
        config = cast(Any, model).generation_config
        config.decoder_start_token_id = self.decoder_start_id
        config.eos_token_id = self.eos_id
        config.pad_token_id = self.pad_id
        config.num_beams = self._num_beams
        if self.hp is not None:
            config.max_length = self.hp.max_seq_length
        super().save_model(model, folder, state_dict=state_dict)

    # ------------------------------------------------------------ loss and metrics
    # ------------------------------------------------------------ generation
    def generate(self, model: torch.nn.Module, items: Sequence[Encoded],
                 placement: Placement) -> list[str]:
        """The model's outputs for `items`' sources, decoded, in one batch."""
        batch = placement.batch(self, items)
        longest = max(len(cast(list[int], it.target)) for it in items)
        limit = self.hp.max_seq_length if self.hp is not None else longest
        with placement.autocast(), quiet_transformers():
            out = model.generate(  # type: ignore[operator]
                input_ids=batch.inputs["input_ids"],
                attention_mask=batch.inputs["attention_mask"],
                do_sample=False, num_beams=self._num_beams,
                max_new_tokens=min(limit, longest + GENERATION_EXTRA_TOKENS),
                decoder_start_token_id=self.decoder_start_id, eos_token_id=self.eos_id,
                pad_token_id=self.pad_id)
        return [text.strip() for text in
                self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    def generation_metrics(self, model: torch.nn.Module, items: Sequence[Encoded],
                           placement: Placement, batch_size: int) -> dict[str, float]:
        import sacrebleu

        order = sorted(range(len(items)), key=lambda i: self.example_length(items[i]))
        outputs: list[str] = [""] * len(items)
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            for i, text in zip(chunk, self.generate(model, [items[i] for i in chunk],
                                                    placement), strict=True):
                outputs[i] = text
        references = [text.strip() for text in self.tokenizer.batch_decode(
            [cast(list[int], it.target) for it in items], skip_special_tokens=True)]
        self._samples = [
            (self.tokenizer.decode(items[i].features["input_ids"],
                                   skip_special_tokens=True).strip(),
             references[i], outputs[i])
            for i in range(min(SAMPLE_COUNT, len(items)))]
        return {"bleu": sacrebleu.corpus_bleu(outputs, [references]).score,
                "chrf": sacrebleu.corpus_chrf(outputs, [references]).score}

    def baselines(self, train: Sequence[Encoded],
                  validation: Sequence[Encoded]) -> dict[str, float]:
        """Copying the source as the translation: its BLEU and chrF against the references,
        as valid_bleu and valid_chrf are scored (high where source and target share words:
        a paraphrase, a spelling fix, a near language)."""
        import sacrebleu

        if not validation:
            return {}
        decode = self.tokenizer.batch_decode
        sources = [text.strip() for text in decode(
            [it.features["input_ids"] for it in validation], skip_special_tokens=True)]
        references = [text.strip() for text in decode(
            [cast(list[int], it.target) for it in validation], skip_special_tokens=True)]
        return {"bleu": sacrebleu.corpus_bleu(sources, [references]).score,
                "chrf": sacrebleu.corpus_chrf(sources, [references]).score}

    def sample_events(self, model: torch.nn.Module, step: int) -> list[tuple[str, dict[str, Any]]]:
        """The outputs of the evaluation just made (`generation_metrics`), not new ones."""
        samples, self._samples = self._samples, []
        return [(f"Sample at step {step}: {output}",
                 {"step": step, "prompt": _clip(source), "reference": reference,
                  "answer": output})
                for source, reference, output in samples]


def _clip(text: str) -> str:
    return text if len(text) <= SAMPLE_SOURCE_CHARS else text[:SAMPLE_SOURCE_CHARS] + "..."
