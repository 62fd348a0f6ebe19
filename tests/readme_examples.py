"""The README's examples as data, for the tests that run them: its code (fenced blocks,
indented blocks and inline code spans), the files, models and `sagetrain` commands they
name, and the first job's curl requests."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PLACEHOLDERS = {"...", "…"}


def readme() -> str:
    return README.read_text()


def code_blocks(text: str) -> list[str]:
    """Fenced and indented (4 spaces, after a blank line) code blocks, whole."""
    blocks: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            blocks.append("\n".join(lines[i + 1:end]))
            i = end + 1
        elif line.startswith("    ") and (i == 0 or not lines[i - 1].strip()):
            end = i
            while end < len(lines) and (lines[end].startswith("    ") or not lines[end].strip()):
                end += 1
            blocks.append("\n".join(x[4:] for x in lines[i:end]).strip("\n"))
            i = end
        else:
            i += 1
    return blocks


def inline_code(text: str) -> list[str]:
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    return [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose)]


def shell_lines(block: str) -> list[str]:
    """A shell block's commands, continuation lines (ending in a backslash) joined and
    comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line.split(" # ")[0].strip() for line in joined.splitlines() if line.strip()]


def all_code(text: str) -> list[str]:
    return [line for block in code_blocks(text) for line in shell_lines(block)] + \
        inline_code(text)


def named_files(text: str) -> set[str]:
    """Paths the examples read: curl's `file=@PATH`, `open("PATH"`, `upload_file("PATH")`,
    `files upload PATH`, `sagetrain train`'s `--train-file`/`--validation-file`, and every
    relative link."""
    found: set[str] = set()
    for code in all_code(text):
        found.update(re.findall(r"file=@(\S+)", code))
        found.update(re.findall(r"""(?:open|upload_file)\(["']([^"']+)["']""", code))
        found.update(re.findall(r"files upload (\S+)", code))
        if re.search(r"sagetrain train\b", code):
            found.update(re.findall(r"--(?:train|validation)-file (\S+)", code))
    found.update(link for link in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
                 if "://" not in link)
    return {name for name in found if name not in PLACEHOLDERS}


def named_models(text: str) -> set[str]:
    """Model names the examples train: `"model": "X"`, `model="X"`, `--model X`,
    `create_job("X"` (placeholders left out)."""
    found: set[str] = set()
    for code in all_code(text):
        found.update(re.findall(r'"model":\s*"([^"]+)"', code))
        found.update(re.findall(r'\bmodel="([^"]+)"', code))
        found.update(re.findall(r"--model (\S+)", code))
        found.update(re.findall(r'create_job\(\s*"([^"]+)"', code))
    return {name for name in found if name not in PLACEHOLDERS and not name.endswith("...")}


@dataclass
class Invocation:
    command: str
    actions: list[str]  # `jobs list|get ...` lists several
    options: list[str]
    source: str


def sagetrain_invocations(text: str) -> list[Invocation]:
    """Every `sagetrain COMMAND [ACTION] [--options]` in the README's code."""
    found = []
    for code in all_code(text):
        for match in re.finditer(r"(?:^|[\s/])sagetrain ([a-z][^\n]*)", code):
            tokens = match.group(1).split()
            if tokens[0] == "sagetrain":  # `docker run ... sagetrain sagetrain worker`
                continue
            actions = tokens[1].split("|") if len(tokens) > 1 and re.fullmatch(
                r"[a-z]+(\|[a-z]+)*", tokens[1]) else []
            options = [t.split("=")[0].rstrip(",.;:)") for t in tokens[1:]
                       if re.fullmatch(r"--?[a-z][a-z0-9-]*(=.*)?[,.;:)]?", t)]
            found.append(Invocation(tokens[0], actions, options, code))
    return found


def first_job_curls(text: str) -> tuple[list[str], dict]:
    """The "Your first job" curl block: the files it uploads, in order, and the job body
    it posts (JSON, its `file-…` placeholders still in)."""
    import json

    section = text.split("## Your first job", 1)[1].split("\n## ", 1)[0]
    block = next(b for b in code_blocks(section) if b.startswith("curl"))
    uploads = re.findall(r"file=@(\S+)", block)
    body = re.search(r"-d '(\{.*?\})'", block, flags=re.S)
    assert body, "no job body in the first job's curl block"
    return uploads, json.loads(body.group(1))
