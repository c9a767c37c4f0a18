"""Every command in README.md and docs/*.md that runs an example, checked against the example itself.

Each command is found in the docs' code blocks and inline code, then
1. parsed as written by the example's own parse_args, so a flag that was renamed, removed or
   given a value the example now refuses fails here;
2. run as a real process with a tiny budget: flags appended after the documented ones (argparse
   keeps the last) shrink the model, the steps and the data (the bundled TinyStories sample or a
   small generated file, generated MNIST files), in a scratch folder, with no network.
The README's quick start must keep exactly two commands, the main job and the tests, and .ci/run
must run that test command verbatim.
"""
from __future__ import annotations

import ast
import gzip
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import deers

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNS_AN_EXAMPLE = re.compile(r"(?:^|\s)python3?\s+examples/\w+\.py\b")
LOG_LINE = re.compile(r"^step \d+/\d+ \| train_loss \d+\.\d{4} \| lr \d\.\d\de[-+]\d\d \| \d+\.\d{3}s \| \d+ tok/s$",
                      re.M)
TIMEOUT_S = 120

# Appended to every documented command of each example: the same run, in miniature.
TINY = {
    "tinystories_train": ["--steps", "2", "--batch-size", "2", "--seq-len", "16", "--n-layer", "1", "--n-embd", "32",
                          "--log-every", "1", "--eval-every", "2", "--eval-batches", "1", "--sample-every", "2",
                          "--sample-tokens", "4", "--checkpoint-every", "2"],
    "sample": ["--max-new-tokens", "4"],
    "mnist_train": ["--epochs", "1", "--limit", "64", "--batch-size", "32"],
    "generate": ["--max-new-tokens", "4"],
    "finetune": ["--steps", "2", "--batch-size", "1", "--seq-len", "16"],
    "inspect_model": ["--top", "1"],  # reads the main job's run folder
}


@dataclass(frozen=True)
class Command:
    doc: str  # where it is shown
    text: str  # as shown
    prefix: tuple[str, ...]  # launcher before `python` (mpirun -n 2, env -u X, ...)
    script: str  # the example's name: "tinystories_train"
    args: tuple[str, ...]  # its arguments as written

    def flag(self, name: str) -> str | None:
        """The value of the last `name VALUE` in args (argparse's rule), or None."""
        values = [self.args[i + 1] for i, a in enumerate(self.args[:-1]) if a == name]
        return values[-1] if values else None


def code_snippets(markdown: str) -> list[str]:
    """The shell text of a page: each line of its fenced blocks, then its inline code spans."""
    snippets = []
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", markdown, flags=re.S | re.M):
        snippets += block.replace("\\\n", " ").splitlines()
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", markdown, flags=re.S | re.M)
    snippets += [span.replace("\\|", "|") for span in re.findall(r"`([^`\n]+)`", prose)]
    return snippets


def documented_commands(docs: list[Path] = DOCS) -> list[Command]:
    """Every distinct command in README.md and docs/*.md (or in `docs`) that runs examples/<name>.py."""
    found: dict[tuple, Command] = {}
    for doc in docs:
        text = doc.read_text()
        snippets = code_snippets(text) if doc.suffix == ".md" else ast.get_docstring(ast.parse(text)).splitlines()
        for snippet in snippets:
            for part in snippet.split("&&"):  # `pip install ... && python examples/...`
                if not RUNS_AN_EXAMPLE.search(part):
                    continue
                tokens = shlex.split(part, comments=True)
                at = next(i for i, t in enumerate(tokens) if re.fullmatch(r"python3?", t))
                script = Path(tokens[at + 1]).stem
                shown = re.sub(r"\s+#.*$", "", part).strip()  # without a trailing shell comment
                command = Command(str(doc.relative_to(ROOT)), shown, tuple(tokens[:at]), script, tuple(tokens[at + 2:]))
                found.setdefault((command.prefix, script, command.args), command)
    return list(found.values())


COMMANDS = documented_commands()
USAGE_LINES = documented_commands(sorted((ROOT / "examples").glob("*.py")))  # the examples' own docstrings
MAIN_JOB = "python examples/tinystories_train.py --device cpu"


def command_id(command: Command) -> str:
    return f"{command.doc}: {command.text}"


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"doc_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_stories(path: Path, count: int = 120) -> None:
    rng = np.random.default_rng(0)
    names, things = ["Lily", "Tom", "Ben", "Mia"], ["ball", "cat", "tree", "boat"]
    stories = [f"Once upon a time {rng.choice(names)} found a {rng.choice(things)}. They played all day."
               for _ in range(count)]
    path.write_text("".join(f"{story}\n<|endoftext|>\n" for story in stories))


def write_mnist(folder: Path) -> None:
    """Small random IDX files under the real names (the examples only need their format)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, count in (("train", 96), ("t10k", 32)):
        for part, array in (("images-idx3-ubyte", rng.integers(0, 256, (count, 28, 28))),
                            ("labels-idx1-ubyte", rng.integers(0, 10, count))):
            header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
            (folder / f"{split}-{part}.gz").write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A scratch folder standing for a fresh checkout's root: the documented relative paths land here."""
    pytest.importorskip("tiktoken")
    pytest.importorskip("safetensors")
    folder = tmp_path_factory.mktemp("fresh")
    write_stories(folder / "stories.txt")
    write_mnist(folder / "mnist")
    return folder


def files_the_command_reads(command: Command, folder: Path) -> None:
    """Create the local inputs a documented command names (e.g. `--text-file stories.txt`)."""
    text_file = command.flag("--text-file")
    if text_file is not None and not (folder / text_file).exists():
        write_stories(folder / text_file)


# ---- 1. every documented command parses as written ---------------------------------------------------
@pytest.mark.parametrize("command", COMMANDS + USAGE_LINES, ids=command_id)
def test_documented_command_parses_as_written(command, workdir, monkeypatch):
    module = load_example(command.script)
    monkeypatch.setattr(module, "check_device", lambda parser, device: None)  # cuda/mps may be absent here
    monkeypatch.chdir(workdir)
    files_the_command_reads(command, workdir)
    module.parse_args(list(command.args))  # an argparse error exits with status 2 and fails the test


# ---- 2. and runs, in miniature -----------------------------------------------------------------------
def _have_mpi() -> bool:
    return shutil.which("mpirun") is not None and importlib.util.find_spec("mpi4py") is not None


def why_it_cannot_run_here(command: Command) -> str | None:
    if "--hostfile" in command.prefix:
        return "needs the hosts of its hostfile"
    if command.prefix[:1] == ("mpirun",) and not _have_mpi():
        return "needs mpirun (openmpi-bin) and mpi4py"
    if command.prefix[:1] == ("mpirun",) and int(command.prefix[command.prefix.index("-n") + 1]) > 2:
        return "needs more than 2 processes"
    if command.script in ("generate", "finetune") and not Path(command.flag("--model") or "gpt2").is_dir():
        return "downloads a pretrained model from the Hugging Face hub (tests/test_pretrained_examples.py runs it offline)"
    device = command.flag("--device") or "cpu"
    try:
        deers.zeros(1, device=device)
    except ValueError as err:  # BackendUnavailable
        return f"--device {device} is not available here ({err})"
    return None


def tiny_command(command: Command, folder: Path) -> list[str]:
    """The documented command with a tiny budget appended, launched with this Python."""
    extra = list(TINY[command.script])
    if command.script == "tinystories_train":
        if command.flag("--text-file") is None and "--resume" not in command.args:
            extra += ["--data", "sample"]  # never the 2.2 GB download in a test
        if "--resume" in command.args:  # two steps past the run it continues
            from deers import checkpoint

            out = folder / (command.flag("--out") or "runs/tinystories") / "ckpt.safetensors"
            extra += ["--steps", str(int(checkpoint.read(out)[1]["step"]) + 2)]
    if command.script == "mnist_train":
        extra += ["--data", str(folder / "mnist"), "--out", "runs/mnist-docs"]
    python = [sys.executable, str(ROOT / "examples" / f"{command.script}.py")]
    return [*command.prefix, *python, *command.args, *extra]


def run(argv: list[str], folder: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_rmaps_base_oversubscribe="1")
    return subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)


@pytest.fixture(scope="module")
def main_job(workdir) -> subprocess.CompletedProcess:
    """The README's main job, in miniature: the run the sampling and resuming commands then use."""
    command = next(c for c in COMMANDS if c.doc == "README.md" and c.text == MAIN_JOB)
    return run(tiny_command(command, workdir), workdir)


@pytest.mark.parametrize("command", COMMANDS, ids=command_id)
def test_documented_command_runs(command, workdir, main_job):
    reason = why_it_cannot_run_here(command)
    if reason is not None:
        pytest.skip(reason)
    files_the_command_reads(command, workdir)
    argv = tiny_command(command, workdir)
    done = main_job if command.doc == "README.md" and command.text == MAIN_JOB else run(argv, workdir)
    assert done.returncode == 0, f"{shlex.join(argv)}\n{done.stdout}\n{done.stderr}"
    if command.script == "tinystories_train":
        assert LOG_LINE.search(done.stdout), done.stdout
        assert "data: " in done.stdout and "saved " in done.stdout
        if "--ddp" in command.args:  # --batch-size is the global batch, split over the ranks
            assert "1 rows on each of 2 ranks" in done.stdout, done.stdout
    elif command.script == "sample":
        assert done.stdout.startswith(command.flag("--prompt") or "Once upon a time")
        assert "checkpoint: " in done.stderr
    elif command.script == "mnist_train":
        assert re.search(r"^epoch 1/1 \| train_loss ", done.stdout, re.M), done.stdout
    elif command.script == "inspect_model":
        assert done.stdout.startswith("after "), done.stdout


# ---- the quick start ---------------------------------------------------------------------------------
def quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"^```bash\n(.*?)^```", section, flags=re.S | re.M)]


def test_quick_start_is_the_main_job_and_the_tests():
    main_job, tests = quick_start_commands()  # exactly two
    assert main_job.endswith("&& " + MAIN_JOB) and "\n" not in main_job
    assert tests == "pip install -e '.[dev,train]' && pytest"
    ci = (ROOT / ".ci" / "run").read_text()
    assert f'README_TEST_COMMAND="{tests}"' in ci and 'bash -c "$README_TEST_COMMAND"' in ci


def test_quick_start_installs_only_extras_that_exist():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for command in quick_start_commands():
        for spec in re.findall(r"pip install -e '\.\[([\w,]+)\]'", command):
            assert set(spec.split(",")) <= set(extras), command


def test_package_data_ships_every_file_of_deers_data():
    tomllib = pytest.importorskip("tomllib")
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["deers.data"]
    shipped = [p for p in (ROOT / "deers" / "data").iterdir() if p.is_file() and p.suffix != ".py"]
    assert {"gpt2.tiktoken", "tinystories-sample.txt.gz", "NOTICE.md"} <= {p.name for p in shipped}
    for path in shipped:
        assert any(path.match(glob) for glob in globs), f"{path.name} is not in pyproject's package-data"
