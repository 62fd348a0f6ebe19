"""The README is true to the repository: its getting-started sections come first, every file
and link it names exists, every model it trains is one a fresh install knows (or one it says
to bring), its `ft:` names have the shape of real ones, every `sagetrain` command and option
it shows exists, every setting it names is one, and its first job's files train."""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from readme_examples import (
    ROOT,
    all_code,
    code_blocks,
    first_job_curls,
    named_files,
    named_models,
    readme,
    sagetrain_invocations,
)

from sage_core.catalog import MINILM, list_models
from sage_core.settings import Settings, get_settings

DOCS = [ROOT / "README.md", ROOT / "bench" / "README.md",
        *sorted((ROOT / "docs").glob("*.md"))]


def test_getting_started_comes_first() -> None:
    headings = re.findall(r"^## (.+)$", readme(), flags=re.M)
    assert headings[:3] == ["The two commands", "Running the service", "Your first job"]
    assert "Operating the service" in headings[3:]


def test_every_file_the_examples_read_exists() -> None:
    names = named_files(readme())
    assert {"examples/train.jsonl", "examples/valid.jsonl"} <= names
    missing = sorted(name for name in names if not (ROOT / name).exists())
    assert not missing, f"the README names files the repository lacks: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc: Path) -> None:
    text = doc.read_text()
    links = [link for link in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
             if "://" not in link]
    missing = [link for link in links if not (doc.parent / link).exists()]
    assert not missing, f"{doc.name} links to missing files: {missing}"
    assert "shared/" not in text  # the team's notes are not part of the repository


def test_the_docs_stand_alone() -> None:
    """docs/API.md and docs/SAGE.md hold the contract and the rule; neither sends the
    reader to the README for them."""
    for name in ("API.md", "SAGE.md"):
        text = (ROOT / "docs" / name).read_text()
        assert "README" not in text.replace("(a README)", "").replace("bench/README.md",
                                                                       ""), name


def test_every_model_is_known_to_a_fresh_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """The packaged model, listed by the catalog with no models folder and no hub; any other
    must be one the README tells the reader to put under SAGETRAIN_MODELS_DIR."""
    packaged = {m.name for m in list_models(Settings(models_dir=None, allow_hub_models=False))}
    assert MINILM in packaged
    text = readme()
    models = {m for m in named_models(text) if not m.startswith("ft:")}
    assert MINILM in models
    for name in models - packaged:
        assert f"`{name.replace('/', '--')}`" in text and "SAGETRAIN_MODELS_DIR" in text, (
            f"the README trains {name!r}, which a fresh install does not have, without "
            "saying which SAGETRAIN_MODELS_DIR folder serves it")


def test_fine_tuned_names_have_the_real_shape() -> None:
    from sage_core.db.ids import new_id
    from worker.runner import fine_tuned_name

    packaged = {m.name for m in list_models(Settings(models_dir=None))}
    names = re.findall(r"ft:[^\s\"`',)]+", readme())
    real = [n for n in names if n not in ("ft:...", "ft:ft:...")]
    assert real, "the README shows no fine-tuned model name"
    token_length = len(new_id("ftjob").removeprefix("ftjob-"))
    for name in real:
        match = re.fullmatch(r"ft:(.+):([^:]*):([0-9a-z]+)", name)
        assert match, name
        base, suffix, token = match.groups()
        assert base in packaged and len(token) == token_length, name
        job = SimpleNamespace(model=base, suffix=suffix or None, id=f"ftjob-{token}")
        assert fine_tuned_name(job) == name  # type: ignore[arg-type]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_every_sagetrain_command_and_option_exists() -> None:
    from sagetrain.cli import build_parser

    commands = _subparsers(build_parser())
    invocations = sagetrain_invocations(readme())
    assert {"serve", "keys", "files", "jobs", "train"} <= {i.command for i in invocations}
    for call in invocations:
        assert call.command in commands, call.source
        parser = commands[call.command]
        actions = _subparsers(parser)
        targets = [parser]
        if actions:
            assert call.actions, f"no action after `sagetrain {call.command}`: {call.source}"
            assert set(call.actions) <= set(actions), call.source
            targets = [actions[a] for a in call.actions]
        for target in targets:
            unknown = [o for o in call.options if o not in target._option_string_actions]
            assert not unknown, f"{unknown} in {call.source!r}"


def test_every_setting_named_exists() -> None:
    named = set(re.findall(r"SAGETRAIN_([A-Z0-9_]*[A-Z0-9])", readme()))
    fields = {name.upper() for name in Settings.model_fields}
    client_only = {"BASE_URL", "API_KEY"}  # read by sagetrain.client, not the server
    assert named - fields - client_only == set()


def test_the_shipped_sample_is_a_balanced_two_label_task() -> None:
    uploads, body = first_job_curls(readme())
    assert uploads == ["examples/train.jsonl", "examples/valid.jsonl"]
    assert body["model"] == MINILM
    train, valid = ([json.loads(line) for line in (ROOT / p).read_text().splitlines()]
                    for p in uploads)
    assert Counter(r["label"] for r in train) == {"positive": 50, "negative": 50}
    assert Counter(r["label"] for r in valid) == {"positive": 20, "negative": 20}
    texts = [r["text"] for r in train + valid]
    assert len(set(texts)) == len(texts)  # no text twice, none shared by the two files


def test_the_sample_trains_with_sagetrain_train(models_dir: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """The README's `sagetrain train` line, on the tiny test model for speed."""
    from sagetrain.cli import main

    monkeypatch.setenv("SAGETRAIN_MODELS_DIR", str(models_dir))
    monkeypatch.chdir(ROOT)
    get_settings.cache_clear()
    try:
        code = main(["train", "--model", "tiny-bert", "--train-file", "examples/train.jsonl",
                     "--validation-file", "examples/valid.jsonl", "--epochs", "1",
                     "--max-seq-length", "32", "--device", "cpu", "--no-progress",
                     "--output", str(tmp_path / "run")])
    finally:
        get_settings.cache_clear()
    assert code == 0
    out = capsys.readouterr().out
    assert "on 100 examples, validating on 40" in out and "valid_accuracy=" in out
    assert (tmp_path / "run" / "final" / "config.json").is_file()


def test_the_start_message_shown_is_the_real_one() -> None:
    from sagetrain.commands.serve import start_message

    shown = next(b for b in code_blocks(readme()) if b.startswith("sagetrain serve\n"))
    data_dir = re.search(r"data: +(\S+)", shown)
    assert data_dir
    assert shown == start_message("127.0.0.1", 8000, Settings(data_dir=Path(data_dir[1])))


def test_every_script_and_make_target_exists() -> None:
    code = all_code(readme())
    scripts = {m for line in code for m in re.findall(r"python (\S+\.py)", line)}
    assert "bench/quality.py" in scripts
    assert [s for s in scripts if not (ROOT / s).is_file()] == []
    targets = {m for line in code for m in re.findall(r"\bmake (\w+)", line)}
    makefile = (ROOT / "Makefile").read_text()
    assert {"setup", "demo", "test", "lint"} <= targets
    assert [t for t in targets if not re.search(rf"^{t}:", makefile, flags=re.M)] == []
