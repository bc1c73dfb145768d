"""What ./scripts/train_pipeline.sh shows: DVC's run as the quickstart's four phases, then the run's results.

    dvc repro 2>&1 | python -m src.pipeline.report stream --log FILE [--verbose]
    python -m src.pipeline.report summary --seconds N [--output-dir DIR]

``stream`` reads DVC's output as it comes: each stage starts its phase ([2/4] corpus, [3/4] tokenizer,
[4/4] model, whose bundle and validation follow), a finished stage adds what it made (the books and the
corpus, the tokenizer's vocabulary and coverage), training shows a line per epoch, and every warning and
error passes through. Everything DVC said goes to ``--log`` (``--verbose``: to the terminal too).
``summary`` prints the final metrics, the artifacts and the validation verdict against the budgets, from
the files the stages wrote, and copies the artifacts to ``--output-dir``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any, TextIO

from src import paths
from src.config import ConfigError, load_config
from src.lib.runtime import bundle
from src.lib.runtime.bundle import BundleError, read_bundle, write_bundle
from src.lib.runtime.cli import ArgumentParser
from src.pipeline.output_dir import export_dir_problem

INDENT = " " * 6
PHASES = {"download": "[2/4] 📖 Downloading corpus...", "tokenize": "[3/4] 🔤 Training tokenizer...",
          "train": "[4/4] 🧠 Training model ({epochs} epochs)...", "bundle": f"{INDENT}📦 Bundling the best model...",
          "validate": f"{INDENT}🔍 Validating the bundle..."}
_RUNNING = re.compile(r"^Running stage '(\w+)'")
_SKIPPED = re.compile(r"^Stage '(\w+)' (?:didn't change|is cached)")
_EPOCH = re.compile(r"^train: epoch (\d+)/([\d.]+): train loss ([\d.]+|nan|inf), validation loss ([\d.]+|nan|inf) "
                    r".*, ([\d.]+)s of training$")
_RESUMING = re.compile(r"^train: resuming after epoch (\d+)")
_LOUD = re.compile(r"\b(error|warning|WARNING|ERROR|Traceback|interrupted|terminated)\b")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def megabytes(size: float) -> str:
    return f"{size / 1e6:.1f} MB"


def duration(seconds: float) -> str:
    """6m 40s, or 42s under a minute."""
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m {rest}s" if minutes else f"{rest}s"


def corpus_lines() -> list[str]:
    """What the download stage made: each book, and the corpus."""
    books = read_json(paths.CORPUS_SOURCES)["books"]
    metrics = read_json(paths.CORPUS_METRICS)["corpus"]
    lines = [f"Downloaded {Path(book['url']).name} ({book['title'] or book['name']}, {book['language']})"
             for book in books]
    languages = ", ".join(f"{code} {entry['share']:.0%}" for code, entry in metrics["languages"].items())
    return lines + [f"✓ Created corpus: {megabytes(metrics['bytes'])} ({languages})"]


def tokenizer_lines() -> list[str]:
    """What the tokenize stage made: the vocabulary and its coverage of the held-out text."""
    metrics = read_json(paths.TOKENIZER_METRICS)["tokenizer"]
    held_out = metrics["held_out"].values()
    characters = sum(m["characters"] for m in held_out)
    coverage = sum(m["character_coverage"] * m["characters"] for m in held_out) / max(characters, 1)
    return [f"✓ Trained vocabulary: {metrics['vocab_size']} tokens", f"✓ Character coverage: {coverage:.2%}"]


FINISHED = {"download": corpus_lines, "tokenize": tokenizer_lines}


def epochs() -> int | str:
    """The epochs params.yaml asks for now (DVC has written a run's options into it when its stages start)."""
    try:
        return load_config().train.epochs
    except ConfigError:
        return "?"


class Stream:
    """DVC's output in, the quickstart's phases out."""

    def __init__(self, out: TextIO, log: TextIO, verbose: bool):
        self.out, self.log, self.verbose = out, log, verbose
        self.stage: str | None = None  # the stage whose output is coming

    def say(self, text: str, indent: str = "") -> None:
        print(f"{indent}{text}", file=self.out, flush=True)

    def close_stage(self) -> None:
        """The finished stage's results, from what it wrote."""
        if self.stage in FINISHED:
            try:
                for line in FINISHED[self.stage]():
                    self.say(line, INDENT)
            except (OSError, ValueError, KeyError):
                pass  # a stage that failed wrote nothing to show; its error has passed through
        self.stage = None

    def feed(self, line: str) -> None:
        line = line.rstrip("\n")
        self.log.write(line + "\n")
        self.log.flush()
        if self.verbose:
            self.say(line, INDENT)
        running, skipped = _RUNNING.match(line), _SKIPPED.match(line)
        epoch, resuming = _EPOCH.match(line), _RESUMING.match(line)
        if running or skipped:
            self.close_stage()
            stage = (running or skipped).group(1)
            if stage in PHASES:
                self.say(PHASES[stage].format(epochs=epochs()))
                self.stage = stage
            if skipped and stage in PHASES:
                self.say("up to date, nothing to do", INDENT + "  ")
                self.close_stage()
        elif epoch and not self.verbose:
            number, total, train_loss, validation_loss, seconds = epoch.groups()
            self.say(f"Epoch {number}/{total}: train_loss={float(train_loss):.2f}, "
                     f"val_loss={float(validation_loss):.2f} [{float(seconds):.0f}s]", INDENT)
        elif resuming and not self.verbose:
            self.say(f"Resuming after epoch {resuming.group(1)} (its checkpoint)", INDENT)
        elif _LOUD.search(line) and not self.verbose:
            self.say(line, INDENT)

    def finish(self) -> None:
        self.close_stage()


def export(output_dir: Path, artifacts: list[Path]) -> None:
    """Copy ``artifacts`` into ``output_dir``, refused (OSError) where it overlaps the project's own files
    (``export_dir_problem``, which train_pipeline.sh checked before the run too). The bundle replaces an earlier
    bundle there whole, verified as it is read, so no file of another version stays in it."""
    problem = export_dir_problem(output_dir)
    if problem:
        raise OSError(f"--output-dir {problem}")
    output_dir.mkdir(parents=True, exist_ok=True)
    for path in artifacts:
        if path == paths.BUNDLE_DIR:
            contents = read_bundle(path)
            write_bundle(output_dir / path.name, {name: contents.files[name] for name in bundle.FILES})
        else:  # the contents, not the mode: DVC leaves its outputs read-only (linked to its cache), a copy is the user's
            shutil.copyfile(path, output_dir / path.name)


def summary(seconds: int, output_dir: Path | None) -> list[str]:
    """The run's final metrics, its artifacts (copied to ``output_dir``) and the validation verdict."""
    cfg = load_config()
    train = read_json(paths.TRAINING_METRICS)
    last = train["epoch_history"][-1]
    final = train["final_metrics"]
    artifacts = [(paths.BEST_MODEL, "lowest val_loss"), (paths.FINAL_MODEL, "last epoch"),
                 (paths.TRAINING_METRICS, f"{len(train['epoch_history'])} epochs, every evaluation"),
                 (cfg.tokenizer_name.model, "the tokenizer"), (paths.BUNDLE_DIR, "the bundle, for a device")]
    if output_dir is not None:
        export(output_dir, [path for path, _ in artifacts] + [cfg.tokenizer_name.vocab])
    shown = (lambda path: output_dir / path.name) if output_dir is not None else (lambda path: path)
    lines = ["✅ Training complete!", "📊 Final metrics:",
             f"   - Train loss: {last['train_loss']:.2f}",
             f"   - Validation loss: {last['validation_loss']:.2f} (best {final['best_validation_loss']:.2f}, "
             f"epoch {final['best_epoch']})",
             f"   - Training time: {duration(final['total_training_time'])} (this run: {duration(seconds)})",
             "", "💾 Artifacts saved:"]
    lines += [f"   - {shown(path)} ({what})" for path, what in artifacts]
    return lines + [""] + validation_lines()


def validation_lines() -> list[str]:
    """The validate stage's verdict: samples, then each budget against its limit."""
    validate = read_json(paths.VALIDATE_METRICS)["validate"]
    quality = validate["quality"]
    failed = [language for language, verdict in quality.items() if not verdict["passed"]]
    budgets = validate["budgets"]
    labels = {"rss_mb": ("Memory (RSS)", "MB"), "peak_mb": ("Memory (peak)", "MB"),
              "latency_p95_ms": ("Latency (p95)", "ms")}
    lines = [f"✓ Validation {'PASSED' if validate['passed'] else 'FAILED'}",
             f"   - Sample generation: {'coherent' if not failed else 'failed in ' + ', '.join(failed)} "
             f"({', '.join(quality)})"]
    for name, (label, unit) in labels.items():
        budget = budgets[name]
        lines.append(f"   - {label}: {budget['value']:g} {unit} ≤ {budget['limit']:g} {unit} "
                     f"{'✓' if budget['passed'] else '✗'}")
    return lines


def main() -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    stream = commands.add_parser("stream", help="DVC's output (stdin) as the quickstart's phases")
    stream.add_argument("--log", type=Path, required=True, help="where everything DVC said goes")
    stream.add_argument("--verbose", action="store_true", help="show everything DVC said too")
    done = commands.add_parser("summary", help="the run's results")
    done.add_argument("--seconds", type=int, required=True, help="how long the run took")
    done.add_argument("--output-dir", type=Path, help="copy the artifacts here")
    args = parser.parse_args()
    if args.command == "stream":
        args.log.parent.mkdir(parents=True, exist_ok=True)
        with args.log.open("w", encoding="utf-8") as log:
            view = Stream(sys.stdout, log, args.verbose)
            for line in sys.stdin:
                view.feed(line)
            view.finish()
        return 0
    try:
        lines = summary(args.seconds, args.output_dir)
    except (OSError, BundleError) as exc:  # the copy: a full disk, an output directory that became unusable
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for line in lines:
        print(f"{INDENT}{line}" if line else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
