"""README.md's commands run as written: every command in its ```bash blocks, its `$ ` examples
and its indented command lines, in a fresh folder as a user would, with `debug=fast` appended to
training commands (and an Optuna sweep cut to 2 trials). Those that need a download, a GPU or
a user's own files are skipped with the reason; those reading ../shared/data run with it, under
`pytest -m slow` (each loads a real dataset: 15-45 s of CPU, most of the cost of all the others).

The commands of one block run in order in one folder (a `mkdir` before the `trainkit` line it
sets up); the blocks run side by side."""

from __future__ import annotations

import functools
import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import REPO, SHARED_DATA

README = REPO / "README.md"
TIMEOUT_S = 300
# Where torchvision's datasets keep their files under a data folder (README's Datasets table).
DATASET_FILES = {"mnist": "MNIST/raw", "fashion_mnist": "FashionMNIST/raw", "kmnist": "KMNIST/raw",
                 "cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python", "svhn": "train_32x32.mat",
                 "stl10": "stl10_binary"}


@dataclass
class Command:
    text: str                # as README writes it (continuation lines joined)
    line: int                # where it starts in README.md
    block: int               # commands of one block share a folder and run in order
    expected_error: str = ""  # a `$ ` example's documented error line ('...' stands for text left out)
    skip: str | None = None  # why it cannot run here
    shared_data: bool = False  # reads a torchvision dataset from ../shared/data

    @property
    def words(self) -> list[str]:
        return shlex.split(self.text, comments=True)

    @property
    def expected_exit(self) -> int:
        return 2 if self.expected_error else 0


def commands_in(text: str) -> list[Command]:
    """The shell commands of a README: ```bash blocks, `$ ` lines in other blocks, indented `trainkit` lines."""
    lines, found, block = text.splitlines(), [], 0
    fence, i = None, 0
    while i < len(lines):
        line, start = lines[i], i + 1
        if line.strip().startswith("```"):
            fence = None if fence is not None else line.strip()[3:].strip()
            block += 1
            i += 1
            continue
        joined = line
        while joined.rstrip().endswith("\\") and i + 1 < len(lines):  # a command continued on the next line
            i += 1
            joined = joined.rstrip()[:-1] + " " + lines[i].strip()
        i += 1
        stripped = joined.strip()
        if fence == "bash" and stripped and not stripped.startswith("#"):
            found.append(Command(stripped, start, block))
        elif fence is not None and stripped.startswith("$ "):
            output = lines[i].strip() if i < len(lines) and not lines[i].strip().startswith("$ ") else ""
            found.append(Command(stripped[2:], start, block, output if output.startswith("error:") else ""))
        elif fence is None and joined.startswith("    ") and stripped.startswith("trainkit "):
            block += 1
            found.append(Command(stripped, start, block))
    return found


def compose_dataset(words: list[str]):
    """The dataset node the command's dataset= / experiment= choice composes (real Hydra)."""
    return _composed_dataset(tuple(w for w in words if re.fullmatch(r"(dataset|experiment)=\w+", w)))


@functools.lru_cache
def _composed_dataset(picks: tuple[str, ...]):
    from conftest import compose_config

    return compose_config(*picks).dataset


def skip_reason(command: Command) -> str | None:
    """Why a command cannot run here (a download, a GPU, a server, files of the user's), or None."""
    words = command.words
    program = words[0] if words else ""
    if program == "pip":
        return "installs packages: this test runs in the environment that command made"
    if program == "pytest":
        return "runs the test suite itself"
    if program == "tensorboard":
        return "starts a server that runs until stopped"
    if program == "python" and any(w.startswith("scripts/bench_") for w in words):
        return "a benchmark (minutes of timed training): run by hand, see Benchmarks"
    if program != "trainkit":
        return None
    if any(re.fullmatch(r"trainer\.device=cuda(:\d+)?", w) for w in words):
        import torch

        if not torch.cuda.is_available():
            return "needs a GPU"
    if words[1:2] in (["refine"], ["report"], ["compare"]) and any("outputs/sweeps/20" in w or "outputs/runs/20" in w
                                                                   for w in words):
        return "names a sweep or run folder of the README's author"
    resume = next((w.split("=", 1)[1] for w in words if w.startswith("resume=")), "auto")
    if resume != "auto" and "outputs/runs/20" in resume:
        return f"resume={resume} names a run folder of the README's author"
    dataset = compose_dataset(words)
    if dataset.name == "imagefolder":
        root = next((w.split("=", 1)[1] for w in words if w.startswith("dataset.root=")), "???")
        if not root.startswith("../shared/data"):
            return f"dataset.root={root} is a folder of the user's own images"
        if not (SHARED_DATA / root.removeprefix("../shared/data").strip("/")).is_dir():
            return f"{root} is not here (see ../shared/data/README.md)"
    elif dataset.name in DATASET_FILES and not (SHARED_DATA / DATASET_FILES[dataset.name]).exists():
        return f"dataset={dataset.name} needs a download ({DATASET_FILES[dataset.name]} is not in ../shared/data)"
    return None


def as_run(command: Command) -> str:
    """The command line this test runs: training commands get debug=fast (unless they choose a debug
    overlay themselves), an Optuna search 2 trials."""
    words = command.words
    if words[:2] != ["trainkit", "train"]:
        return command.text
    if not any(w.startswith("debug=") for w in words):  # a command's own debug overlay stays (the last one wins)
        words.append("debug=fast")
    if any(w.startswith("hparams_search=") for w in words):
        words.append("hydra.sweeper.n_trials=2")
    return shlex.join(words)  # without the README's trailing comment


def classified(command: Command) -> Command:
    """The command with its skip reason and data needs (composed once, here: Hydra is not thread-safe)."""
    command.skip = skip_reason(command)
    if not command.skip and command.words[:1] == ["trainkit"]:
        command.shared_data = ("../shared/data" in command.text
                               or compose_dataset(command.words).name in DATASET_FILES)
    return command


COMMANDS = [classified(c) for c in commands_in(README.read_text())]


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    ran: str = field(default="")


def run_block(commands: list[Command], root: Path) -> dict[int, Outcome]:
    """Run a block's commands in order, in a fresh folder where ../shared/data is the real data."""
    work = root / "clone"
    work.mkdir(parents=True)
    (root / "shared").mkdir()
    if SHARED_DATA.is_dir():
        (root / "shared" / "data").symlink_to(SHARED_DATA)
    bin_dir = str(Path(sys.executable).parent)  # the installed trainkit, as an activated venv has it
    # One torch thread per process: the commands run side by side, and idle OpenMP threads spinning
    # for a core another command holds only burn time (the results do not depend on it).
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "COLUMNS": "200",
           "OMP_NUM_THREADS": "1"}
    env.pop("TRAINKIT_OUTPUT_DIR", None)
    env.pop("TRAINKIT_DATA_DIR", None)
    outcomes = {}
    for command in commands:
        run_env = {**env, "TRAINKIT_DATA_DIR": str(SHARED_DATA)} if command.shared_data else env
        ran = as_run(command)
        result = subprocess.run(["bash", "-c", ran], cwd=work, env=run_env, capture_output=True, text=True,
                                timeout=TIMEOUT_S)
        outcomes[command.line] = Outcome(result.returncode, result.stdout, result.stderr, ran)
    return outcomes


def params() -> list:
    """One test per command: skipped with its reason, or marked slow when it reads ../shared/data."""
    marked = []
    for c in COMMANDS:
        marks = [pytest.mark.skip(reason=c.skip)] if c.skip else [pytest.mark.slow] if c.shared_data else []
        marked.append(pytest.param(c, id=f"line {c.line}: {c.text[:70]}", marks=marks))
    return marked


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory) -> dict[int, Outcome]:
    """The outcome of every selected README command, by its line: each block's commands in order in
    their own folder, the blocks side by side (a command on shared data is a block of its own)."""
    selected = {item.callspec.params["command"].line for item in request.session.items
                if item.module is request.module and hasattr(item, "callspec") and "command" in item.callspec.params}
    blocks: dict[object, list[Command]] = {}
    for c in COMMANDS:
        if c.line in selected and not c.skip:
            blocks.setdefault(("line", c.line) if c.shared_data else c.block, []).append(c)
    root = tmp_path_factory.mktemp("readme")
    with ThreadPoolExecutor(max(2, min(4, os.cpu_count() or 2))) as pool:
        results = pool.map(lambda key: run_block(blocks[key], root / f"block{list(blocks).index(key)}"), blocks)
        return {line: outcome for result in results for line, outcome in result.items()}


def test_the_readme_has_commands_to_run():
    texts = [c.text for c in COMMANDS]
    assert "trainkit train" in texts and len(COMMANDS) > 20
    assert sum(1 for c in COMMANDS if c.expected_error) >= 5  # the bad-input examples, with their messages


def documented_error_shown(expected: str, stderr: str) -> bool:
    """The documented line, where '...' may stand for any text, is a line of stderr."""
    pattern = ".*".join(re.escape(part) for part in expected.split("..."))
    return any(re.fullmatch(pattern, line) for line in stderr.splitlines())


@pytest.mark.parametrize("command", params())
def test_readme_command_runs_as_documented(command, outcomes):
    outcome = outcomes[command.line]
    assert outcome.returncode == command.expected_exit, (
        f"README.md line {command.line}: `{outcome.ran}` exited {outcome.returncode}, expected {command.expected_exit}\n"
        f"{outcome.stdout[-3000:]}\n{outcome.stderr[-3000:]}")
    if command.expected_error:
        assert documented_error_shown(command.expected_error, outcome.stderr), (command.expected_error, outcome.stderr)
