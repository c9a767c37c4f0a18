"""Every document the project cites is in the project, and every link in its docs resolves.

A learner who clones Deers must be able to open whatever a comment, a docstring or a page tells
them to read. Two checks, over the repository's own text files (git's list when git is there,
else a walk that skips hidden, build and virtual-environment folders):
1. each Markdown file name a file cites resolves: relative to the citing file, to the repository
   root, or (a bare name such as `NOTICE.md`) to some file of that name in the repository;
2. each relative Markdown link `[text](target)` in README.md and docs/*.md points at a file or
   folder that exists.
"""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEXT_SUFFIXES = {".py", ".md", ".sh", ".cu", ".cuh", ".h", ".toml", ".txt", ".cfg", ".ini", ".yml", ".yaml", ""}
SKIP_DIRS = {"__pycache__", "build", "dist", "node_modules", "runs", "venv"}
MD_CITATION = re.compile(r"[\w./:~-]*[\w-]\.md\b")  # a path-like token ending in .md
MD_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")  # [text](target)


def repo_files() -> list[Path]:
    """The repository's files, relative to ROOT: git's list (tracked and untracked, not ignored)."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                             capture_output=True, check=True, timeout=30).stdout
        return sorted({Path(p) for p in out.decode().split("\0") if p and (ROOT / p).is_file()})
    except (OSError, subprocess.SubprocessError):
        files = []
        for folder, dirs, names in os.walk(ROOT):
            dirs[:] = [d for d in dirs if d in (".ci", ".github") or not (d.startswith(".") or d in SKIP_DIRS
                                                                            or d.endswith(".egg-info"))]
            files += [Path(folder, n).relative_to(ROOT) for n in names]
        return sorted(files)


FILES = repo_files()
NAMES = {p.name for p in FILES}
PATHS = {str(p) for p in FILES}
DOCS = [p for p in FILES if p.suffix == ".md" and (p.parent == Path("docs") or p == Path("README.md"))]


def text_of(path: Path) -> str | None:
    """The file's text, or None for binary or large data files (which cite nothing)."""
    if path.suffix not in TEXT_SUFFIXES or (ROOT / path).stat().st_size > 2_000_000:
        return None
    try:
        return (ROOT / path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None


def held(path: str) -> bool:
    """Whether the repository holds this path (relative to ROOT): one of its files, spelled with
    the same case (a case-insensitive file system must not hide a wrong spelling), or a folder."""
    path = os.path.normpath(path)
    return path in PATHS or (not path.startswith("..") and (ROOT / path).is_dir())


def resolves(citing: Path, cited: str) -> bool:
    """Whether `cited` (as written in `citing`) names a file of the repository."""
    target = cited.split("#", 1)[0]
    if held(str(citing.parent / target)) or held(target):
        return True
    return "/" not in target and target in NAMES


def dangling_citations(path: Path, text: str) -> list[str]:
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for match in MD_CITATION.finditer(line):
            cited = match.group(0)
            if "://" in cited or cited.startswith("~"):  # a web address or a user's own file, not ours to hold
                continue
            if not resolves(path, cited):
                found.append(f"{path}:{number}: cites {cited}, which the repository does not hold")
    return found


def test_the_repository_holds_its_own_docs():
    assert Path("README.md") in FILES and Path("docs/design.md") in FILES, "run from a checkout of Deers"


def test_every_cited_md_file_is_in_the_repository():
    problems = []
    for path in FILES:
        text = text_of(path)
        if text is not None:
            problems += dangling_citations(path, text)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("doc", DOCS, ids=str)
def test_every_relative_link_in_the_docs_resolves(doc):
    problems = []
    for number, line in enumerate((ROOT / doc).read_text(encoding="utf-8").splitlines(), 1):
        for match in MD_LINK.finditer(line):
            target = match.group(1)
            if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):  # http:, mailto:, an anchor
                continue
            if not held(str(doc.parent / target.split("#", 1)[0])):
                problems.append(f"{doc}:{number}: link to {target} does not resolve")
    assert not problems, "\n".join(problems)


def test_the_checks_catch_a_missing_document():
    """The two checks can fail: a citation of a file nobody ships is reported."""
    missing = "NOT-IN-THE-REPO" + ".md"
    assert dangling_citations(Path("deers/x.py"), f"# see {missing} for the contract")
    assert not dangling_citations(Path("docs", "page" + ".md"), "see design.md and https://example.org/README.md")
