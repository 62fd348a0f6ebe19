"""`sagetrain chat`: talk to a causal LM folder (a downloaded checkpoint or final/ model).

The conversation is formatted by the tokenizer's own chat template, as in training, and
generation stops at the folder's end-of-turn ids (generation_config.json, else config.json,
plus the tokenizer's EOS). `--prompt` answers and exits; without it, a REPL on stdin.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from sage_core.names import ADAPTER_DIR

RESET, EXIT = "/reset", "/exit"
# config.json's architectures that AutoModelForCausalLM serves as a text generator
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Chat with a causal language model folder (a Hugging Face folder: a checkpoint "
        "downloaded with `sagetrain checkpoints download`, or final/ of `sagetrain train`). "
        "Turns are formatted with the tokenizer's chat template. With --prompt, prints the "
        "answer to each prompt and exits; otherwise reads one user turn per line from stdin, "
        f"keeping the conversation: {RESET} clears it, {EXIT} or end of input quits.")
    parser.add_argument("folder", metavar="FOLDER", type=Path,
                        help="the model folder (config.json, weights, tokenizer)")
    parser.add_argument("--prompt", metavar="TEXT", action="append", default=None,
                        help="a user turn to answer, then exit; repeatable: successive turns "
                             "of one conversation, each answer printed in order")
    parser.add_argument("--system", metavar="TEXT", default=None,
                        help="a system message opening the conversation")
    parser.add_argument("--max-new-tokens", metavar="N", type=_positive_int, default=256,
                        help="the most tokens an answer may have (default 256)")
    parser.add_argument("--temperature", metavar="T", type=_non_negative_float, default=0.0,
                        help="sampling temperature; 0 picks the likeliest token each time "
                             "(greedy, the default)")
    parser.add_argument("--seed", metavar="N", type=int, default=None,
                        help="seed for sampling (with --temperature above 0)")
    parser.add_argument("--raw", action="store_true",
                        help="no chat template: continue each prompt as plain text (for "
                             "completion models or a folder without a template); no "
                             "conversation is kept")
    parser.add_argument("--device", metavar="DEVICE", default=None,
                        help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


class ChatError(Exception):
    """A problem with the folder or the options, told to the user without a traceback."""


def _fail(message: str) -> int:
    print(f"sagetrain chat: error: {message}", file=sys.stderr)
    return 2


@dataclass
class Chat:
    """A model, its tokenizer, and the conversation so far."""

    model: Any  # a transformers PreTrainedModel
    tokenizer: Any
    generation: Any  # a transformers GenerationConfig
    raw: bool = False
    system: str | None = None
    messages: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def answer(self, text: str) -> str:
        import torch

        if self.raw:
            inputs = self.tokenizer(text, return_tensors="pt")
        else:
            self.messages.append({"role": "user", "content": text})
            inputs = self.tokenizer.apply_chat_template(
                self.messages, add_generation_prompt=True, return_tensors="pt",
                return_dict=True)
        inputs = {k: v.to(self.model.device) for k, v in inputs.items()
                  if k in ("input_ids", "attention_mask")}
        with torch.inference_mode():
            output = self.model.generate(**inputs, generation_config=self.generation)
        new_tokens = output[0, inputs["input_ids"].shape[1]:]
        reply = self.tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
        if not self.raw:
            self.messages.append({"role": "assistant", "content": reply})
        return reply


def load_chat(folder: Path, *, raw: bool = False, system: str | None = None,
              max_new_tokens: int = 256, temperature: float = 0.0,
              device: str | None = None) -> Chat:
    """Load `folder` for chatting; ChatError says what is wrong with it."""
    if not folder.is_dir():
        raise ChatError(f"no such folder: {folder}")
    if not (folder / "config.json").is_file():
        hint = (f"; it holds a LoRA adapter: use the merged model (the checkpoint's root, "
                f"not {ADAPTER_DIR}/)" if (folder / "adapter_config.json").is_file() else "")
        raise ChatError(f"{folder} is not a Hugging Face model folder (no config.json){hint}")
    if raw and system is not None:
        raise ChatError("--system needs a chat template; it does not go with --raw")

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from sage_core.training.tasks import quiet_transformers

    config = AutoConfig.from_pretrained(folder)
    architectures = getattr(config, "architectures", None) or []
    if not any(a.endswith(_CAUSAL_SUFFIXES) for a in architectures):
        kind = ", ".join(architectures) or config.model_type
        raise ChatError(f"{folder} is not a causal language model ({kind}); chat needs a "
                        "decoder such as a LlamaForCausalLM")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise ChatError(f"{folder}: cannot load its tokenizer: {exc}") from exc
    if not raw and not getattr(tokenizer, "chat_template", None):
        raise ChatError(f"{folder} has no chat template (tokenizer_config.json or "
                        "chat_template.jinja); use --raw to continue plain text prompts")

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        with quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(
                folder, dtype="auto" if device.startswith("cuda") else torch.float32)
    except (OSError, ValueError) as exc:
        raise ChatError(f"{folder}: cannot load the model: {exc}") from exc
    model.to(device)  # type: ignore[arg-type]  # transformers' stubs miss str devices
    model.eval()
    return Chat(model, tokenizer, _generation_config(model, tokenizer, GenerationConfig,
                                                     max_new_tokens, temperature),
                raw=raw, system=system)


def _generation_config(model: Any, tokenizer: Any, config_class: Any, max_new_tokens: int,
                       temperature: float) -> Any:
    """The folder's generation settings (its EOS ids above all), with ours on top."""
    generation = config_class.from_dict(model.generation_config.to_dict())
    eos = generation.eos_token_id
    eos_ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos_ids:
        eos_ids.append(tokenizer.eos_token_id)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (
        eos_ids[0] if eos_ids else None)
    sampling: dict[str, Any] = (
        {"do_sample": True, "temperature": temperature} if temperature > 0 else
        # greedy: sampling settings the folder may carry would only raise warnings
        {"do_sample": False, "temperature": None, "top_p": None, "top_k": None})
    generation.update(max_new_tokens=max_new_tokens, eos_token_id=eos_ids or None,
                      pad_token_id=pad, **sampling)
    return generation


def repl(chat: Chat, stdin: TextIO, stdout: TextIO) -> None:
    interactive = stdin.isatty()
    if interactive:
        print(f"{RESET} clears the conversation; {EXIT} or Ctrl-D quits", file=sys.stderr)
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = stdin.readline()
        if not line:  # end of input
            break
        text = line.strip()
        if text == EXIT:
            break
        if text == RESET:
            chat.reset()
            if interactive:
                print("(conversation cleared)", file=sys.stderr)
            continue
        if text:
            print(chat.answer(text), file=stdout, flush=True)


def run(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        chat = load_chat(args.folder, raw=args.raw, system=args.system,
                         max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                         device=args.device)
    except ChatError as exc:
        return _fail(str(exc))
    if args.seed is not None:
        import torch

        torch.manual_seed(args.seed)
    try:
        if args.prompt is not None:
            for prompt in args.prompt:
                print(chat.answer(prompt), flush=True)
        else:
            repl(chat, sys.stdin, sys.stdout)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    return 0
