"""Corpus scale: download, tokenize and a few training steps through `dvc repro`, for corpora of growing size.

    python -m bench.scale [--sizes 3,30,300,1000] [--varied | --books-dir DIR] [--max-steps 50]
                          [--eval-tokens 16384] [--set KEY=VALUE ...] [--out docs/PERFORMANCE.md] [--json]

For each size (MB of book files) a fresh git project, a copy of this one, gets a shelf of books in
books/shelf/ (one directory source) and runs `dvc repro -s STAGE` for check_params, download, tokenize and
train (``train.max_steps`` steps, a sample of ``train.eval_tokens`` validation tokens), one stage at a time.
Each stage's wall time and peak RSS are recorded: the largest single process of the stage (its rusage, which
counts every process it waited for) and the sum over its process tree, sampled. The training figures come
from metrics/train_speed.json; the disk from `du` of books/, data/ and .dvc/cache (hard links counted once).

The shelf is the default books (``TT_CORPUS_MIRROR``, else ../shared/corpus beside the checkout), or the .txt files of
``--books-dir``, in whole copies until the size is reached. ``--varied`` shuffles the words of every line of a
copy's text (seeded by the copy), so that the tokenizer sees varied text, not the same sentences again.
The table replaces its variant's "Corpus scale" section of ``--out`` (the rest of the page is kept); ``--json`` prints
the figures instead, for ``bench.performance_page``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import yaml

from bench.performance_page import scale as render_section
from src import paths
from src.atomic import write_atomic
from src.config import ConfigError, names_called_for
from src.data.fetch import MIRROR_ENV
from src.training.distributed import processor_name

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BOOKS = ROOT.parent / "shared" / "corpus"  # the default books beside the checkout, as CI lays them out
SHELF = "books/shelf"
STAGES = ("check_params", "download", "tokenize", "train")
SIZES_MB = "3,30,300,1000"
SAMPLE_SECONDS = 0.2  # how often the process tree's memory is sampled
# Gutenberg's markers: --varied shuffles only the text between them, so the download stage still finds them.
_START = re.compile(rb"^[ \t]*\*{3}[ \t]*START OF", re.MULTILINE)
_END = re.compile(rb"^[ \t]*\*{3}[ \t]*END OF", re.MULTILINE)


def shuffled_words(text: bytes, seed: int) -> bytes:
    """``text`` with the words of each line in a seeded random order (spaces between them, line breaks kept); in a
    Gutenberg file only the book between the START and END markers."""
    start, end = _START.search(text), _END.search(text)
    head, body, tail = b"", text, b""
    if start and end and start.start() < end.start():
        cut_start, cut_end = text.index(b"\n", start.start()) + 1, text.rindex(b"\n", 0, end.start()) + 1
        head, body, tail = text[:cut_start], text[cut_start:cut_end], text[cut_end:]
    draw = random.Random(seed)
    lines = []
    for line in body.split(b"\n"):
        ending = b"\r" if line.endswith(b"\r") else b""
        words = line.rstrip(b"\r").split()
        draw.shuffle(words)
        lines.append(b" ".join(words) + ending)
    return head + b"\n".join(lines) + tail


def shelf_files(base: list[Path], size_mb: float) -> list[tuple[int, Path]]:
    """(copy, book) for as many whole copies of ``base`` as reach ``size_mb`` MB (at least one)."""
    base_bytes = sum(path.stat().st_size for path in base)
    copies = max(1, math.ceil(size_mb * 1e6 / base_bytes))
    return [(copy, path) for copy in range(copies) for path in base]


def build_shelf(project: Path, base: list[Path], size_mb: float, varied: bool) -> int:
    """Write the shelf into ``project``'s books/shelf/; its number of books."""
    shelf = project / SHELF
    shelf.mkdir(parents=True)
    books = shelf_files(base, size_mb)
    for copy, path in books:
        target = shelf / f"copy{copy:04d}_{path.name}"
        if varied:
            target.write_bytes(shuffled_words(path.read_bytes(), copy))
        else:
            shutil.copyfile(path, target)
    return len(books)


def write_params(project: Path, overrides: dict[str, object]) -> None:
    """``project``'s params.yaml with dotted-key ``overrides``, and the names.* they call for unless set."""
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for dotted, value in overrides.items():
        node = params
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    try:
        called_for = names_called_for(params)
    except ConfigError as exc:
        sys.exit(f"the bench's params are not valid: {exc}")
    for key, name in called_for.items():
        if f"names.{key}" not in overrides:
            params["names"][key] = name
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def create_project(path: Path, env: dict[str, str]) -> None:
    """A copy of this project in ``path``, committed to a fresh git repo."""
    path.mkdir(parents=True)
    for name in paths.PROJECT_FILES:
        source, target = ROOT / name, path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.is_file():
            shutil.copy2(source, target)
    for command in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"], ["git", "commit", "-q", "-m", "bench"]):
        subprocess.run(command, cwd=path, env=env, check=True, capture_output=True)


def tree_rss(process: psutil.Process) -> int:
    """The resident memory of ``process`` and all its descendants now (0 once it has ended)."""
    total = 0
    try:
        for member in [process, *process.children(recursive=True)]:
            try:
                total += member.memory_info().rss
            except psutil.Error:
                pass
    except psutil.Error:
        return 0
    return total


def run_stage(project: Path, stage: str, env: dict[str, str]) -> dict:
    """`dvc repro -s STAGE` in ``project``: its wall seconds, the peak RSS of its largest process and of its tree."""
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "-s", stage], cwd=project, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    peak, ended = [0], threading.Event()
    watched = psutil.Process(child.pid)

    def sample() -> None:
        while not ended.wait(SAMPLE_SECONDS):
            peak[0] = max(peak[0], tree_rss(watched))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    ended.set()
    sampler.join()
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        tail = "\n".join(output.decode(errors="replace").splitlines()[-15:])
        sys.exit(f"`dvc repro -s {stage}` failed in {project} (exit {child.returncode}):\n{tail}")
    return {"seconds": round(seconds, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # KiB on Linux
            "tree_peak_rss_mb": round(peak[0] / 2**20, 1)}


def disk_mb(project: Path, *names: str) -> float:
    """The disk ``names`` in ``project`` take together, a hard-linked file once (`du`)."""
    present = [name for name in names if (project / name).exists()]
    done = subprocess.run(["du", "-skc", *present], cwd=project, capture_output=True, text=True, check=True)
    return round(int(done.stdout.splitlines()[-1].split()[0]) / 1024, 1)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def measure_size(size_mb: float, base: list[Path], args: argparse.Namespace, workdir: Path,
                 env: dict[str, str]) -> dict:
    """One size: a fresh project with its shelf, each stage through DVC, and what it cost."""
    project = workdir / f"scale_{size_mb:g}mb"
    create_project(project, env)
    books = build_shelf(project, base, size_mb, args.varied)
    shelf = {"name": "shelf", "url": f"{SHELF}/", "format": args.format}
    if args.language:
        shelf["language"] = args.language
    write_params(project, {"corpus.sources": [shelf], "train.max_steps": args.max_steps,
                           "train.eval_tokens": args.eval_tokens, **args.overrides})
    subprocess.run(["git", "add", "-A"], cwd=project, env=env, check=True, capture_output=True)
    subprocess.run(["git", "commit", "-q", "-m", "shelf"], cwd=project, env=env, check=True, capture_output=True)
    print(f"{size_mb:g} MB: {books} books in {project}", file=sys.stderr, flush=True)
    stages = {}
    for stage in STAGES:
        stages[stage] = run_stage(project, stage, env)
        print(f"  {stage}: {stages[stage]}", file=sys.stderr, flush=True)
    corpus = read_json(project / "metrics/corpus.json")["corpus"]
    tokens = read_json(project / "data/tokens/meta.json")
    speed = read_json(project / "metrics/train_speed.json")["train_speed"]
    result = {
        "size_mb": size_mb, "books": books,
        "book_mb": round(sum(p.stat().st_size for p in (project / SHELF).iterdir()) / 1e6, 1),
        "corpus_mb": round(corpus["bytes"] / 1e6, 1),
        "tokens": tokens["train"]["tokens"] + tokens["validation"]["tokens"],
        "stages": stages,
        "train": {"steps": args.max_steps, "tokens_per_sec": round(speed["tokens_per_sec"]),
                  "evaluation_seconds": round(speed["evaluation_seconds"], 1),
                  "checkpoint_seconds": round(speed["checkpoint_seconds"], 1)},
        "disk_mb": {"books": disk_mb(project, "books"), "data_and_cache": disk_mb(project, "data", ".dvc/cache"),
                    "total": disk_mb(project, "books", "data", ".dvc/cache")},
    }
    if not args.keep:
        shutil.rmtree(project)
    return result


def replace_section(page: str, section: str) -> str:
    """``page`` with the section of ``section``'s heading (its first line, up to the next "## " heading) replaced by
    ``section``, or with ``section`` added at the end when it has none: each variant keeps its own section."""
    lines = page.rstrip("\n").split("\n") if page.strip() else ["# Performance"]
    new = section.rstrip("\n").split("\n")
    if new[0] in lines:
        start = lines.index(new[0])
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines[start:end] = new + ([""] if end < len(lines) else [])
    else:
        lines += ["", *new]
    return "\n".join(lines) + "\n"


def parse_sizes(text: str) -> list[float]:
    try:
        sizes = [float(size) for size in text.split(",") if size.strip()]
    except ValueError:
        sizes = []
    if not sizes or any(not 0 < size <= 100_000 for size in sizes):
        raise argparse.ArgumentTypeError(f"{text!r}: give sizes in MB, comma-separated, e.g. 3,30")
    return sizes


def parse_override(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: give KEY=VALUE, e.g. model.n_layers=2")
    return key, yaml.safe_load(value)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=parse_sizes, default=parse_sizes(SIZES_MB), help="MB of books, e.g. 3,30")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--varied", action="store_true", help="shuffle the words of each line, seeded by the copy")
    source.add_argument("--books-dir", type=Path, help="a directory of .txt books to build the shelves from")
    parser.add_argument("--format", choices=("gutenberg", "plain"), default="gutenberg", help="the books' format")
    parser.add_argument("--language", help="the books' ISO 639-1 code (default: each Gutenberg header's)")
    parser.add_argument("--max-steps", type=int, default=50, help="train.max_steps of the train stage")
    parser.add_argument("--eval-tokens", type=int, default=16384, help="train.eval_tokens of the train stage")
    parser.add_argument("--set", dest="overrides", type=parse_override, action="append", default=[],
                        metavar="KEY=VALUE", help="another params.yaml value (repeatable)")
    parser.add_argument("--workdir", type=Path, help="where the projects are built (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep each size's project")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/PERFORMANCE.md")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON, write no page")
    args = parser.parse_args(argv)
    args.overrides = dict(args.overrides)
    books_dir = args.books_dir or Path(os.environ.get(MIRROR_ENV) or DEFAULT_BOOKS)
    base = sorted(path for path in books_dir.glob("*.txt") if path.is_file()) if books_dir.is_dir() else []
    if not base:
        parser.error(f"{books_dir}: no .txt books there (set --books-dir, or {MIRROR_ENV} for the default books)")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "bench", "GIT_COMMITTER_NAME": "bench",
           "GIT_AUTHOR_EMAIL": "bench@example.invalid", "GIT_COMMITTER_EMAIL": "bench@example.invalid",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PYTHONPATH", None)  # the stages import the project's copy, as for a user
    env.pop(MIRROR_ENV, None)  # every book is local
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tt_scale_"))
    workdir.mkdir(parents=True, exist_ok=True)
    variant = "varied" if args.varied else (f"from {args.books_dir.name}/" if args.books_dir else "repeated")
    result = {"benchmark": "scale", "cpu": processor_name(), "date": datetime.date.today().isoformat(),
              "variant": variant, "max_steps": args.max_steps, "eval_tokens": args.eval_tokens,
              "command": "python -m bench.scale " + " ".join(argv if argv is not None else sys.argv[1:]),
              "sizes": [measure_size(size, base, args, workdir, env) for size in args.sizes]}
    if not args.workdir and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(result))
        return
    page = args.out.read_text() if args.out.is_file() else ""
    write_atomic(args.out, replace_section(page, "\n".join(render_section(result))).encode())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
