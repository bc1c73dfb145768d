"""The quickstart this project was specified from (../shared/seed/QUICKSTART.md), every command of it verbatim.

Its fenced bash commands run in document order on a fresh copy of the project, all but those that cannot run
here (`pip install`, `code`, `less`, `df -h`); `/path/with/space`, the troubleshooting section's placeholder,
becomes a temporary directory. Only the params are small: a model of one layer, fp32, 20 epochs of a corpus of
the three default books cut short (their Gutenberg header and footer kept, served from 127.0.0.1 and pinned by
sha256), a BPE tokenizer (unigram cannot learn `--vocab-size 16000` pieces from so little text), one sample per
language with quality limits this small a model can meet. Each command exits as the quickstart implies and
prints what its snippet prints; "Files Created" all exist at the end.
"""

import hashlib
import json
import re
import shlex
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, BookServer, ProjectRepo, project_params

QUICKSTART = REPO_ROOT.parent / "shared" / "seed" / "QUICKSTART.md"
NOT_HERE = ("pip install", "code ", "less ", "df -h")
PLACEHOLDER = "/path/with/space"
BODY_BYTES = 40_000  # of each book's text, between its Gutenberg header and footer
KILL_ENV = {"PYTHONPATH": str(REPO_ROOT / "tests" / "fault_injection")}  # tests/fault_injection/sitecustomize.py

QUICKSTART_PARAMS = {
    "epochs": 20, "batch_size": 32, "learning_rate": 0.003, "max_seq_length": 32,
    "tokenizer.model_type": "bpe",
    "model.n_layers": 1, "model.n_heads": 2, "model.d_model": 32, "model.d_ff": 64,
    "train.optimizer": "adamw", "train.warmup_steps": 5, "train.checkpoint_every": 5, "train.eval_batch_size": 256,
    "train.precision": "fp32", "train.attention": "math", "train.compile": False, "train.plateau_loss": 100.0,
    "validate.samples_per_language": 1, "validate.sample_tokens": 24, "validate.warmup_tokens": 4,
    "validate.max_repetition": 1.0, "validate.max_whitespace_share": 1.0, "validate.max_unknown_share": 1.0,
    "validate.min_language_share": 0.0,
}
FILES_CREATED = ("data/corpus_bilingual.txt", "data/bilingual_8k.model", "data/bilingual_8k.vocab",
                 "data/best_model.pt", "data/final_model.pt", "data/checkpoint_epoch_5.pt",
                 "data/checkpoint_epoch_10.pt", "data/checkpoint_epoch_15.pt", "data/checkpoint_epoch_20.pt",
                 "data/training_metrics.json")


def quickstart_commands(text: str) -> list[str]:
    """Every command of the fenced bash blocks, continuation lines and multi-line quotes joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.DOTALL):
        pending = ""
        for line in block.splitlines():
            if not pending and (not line.strip() or line.lstrip().startswith("#")):
                continue
            pending += line + "\n"
            try:
                complete = bool(shlex.split(pending, comments=True)) and not pending.rstrip().endswith("\\")
            except ValueError:  # a quote still open
                complete = False
            if complete:
                commands.append(pending.rstrip("\n"))
                pending = ""
        assert not pending, f"an unfinished command in QUICKSTART.md: {pending}"
    return commands


def short_book(source: Path, target: Path) -> None:
    """``source``'s Gutenberg header, the first BODY_BYTES of its text (at a line break) and its footer."""
    text = source.read_bytes()
    start = text.index(b"\n", text.index(b"*** START")) + 1
    end = text.index(b"*** END")
    cut = text.index(b"\n", start + BODY_BYTES) + 1
    target.write_bytes(text[:cut] + b"\r\n" + text[end:])


@pytest.fixture
def quickstart_repo(tmp_path, shared_corpus):
    """A fresh copy of the project with QUICKSTART_PARAMS, its books served from 127.0.0.1."""
    books = tmp_path / "books"
    books.mkdir()
    sources = project_params()["corpus"]["sources"]
    for source in sources:
        name = Path(source["url"]).name
        short_book(shared_corpus / name, books / name)
    server = BookServer(books)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    repo = ProjectRepo.create(tmp_path / "project")
    repo.environ.pop("TT_CORPUS_MIRROR", None)  # the books come from their URLs, which are the server's
    short = [{**s, "url": f"{server.url}/{Path(s['url']).name}",
              "sha256": hashlib.sha256((books / Path(s["url"]).name).read_bytes()).hexdigest()} for s in sources]
    repo.set_params({**QUICKSTART_PARAMS, "corpus.sources": short})
    repo.run("git", "commit", "-qam", "the quickstart's params, small")
    yield repo
    server.shutdown()
    server.server_close()


def run(repo: ProjectRepo, command: str, env: dict | None = None) -> subprocess.CompletedProcess:
    started = time.monotonic()
    done = repo.run("bash", "-c", command, check=False, timeout=1800, env=env)
    print(f"[quickstart] exit {done.returncode} in {time.monotonic() - started:.0f} s: {command.splitlines()[0]}")
    return done


def expected_output(command: str, done: subprocess.CompletedProcess, repo: Path) -> list[str]:
    """What the quickstart shows its command printing, in the form this project prints it."""
    if command == "./scripts/train_pipeline.sh":
        return ["[1/4]", "Checking prerequisites", "PASS", "[2/4]", "Downloaded pg1342.txt (Pride and Prejudice",
                "Downloaded pg11.txt (Alice", "Downloaded pg2000.txt (Don Quijote", "Created corpus:", "[3/4]",
                "Trained vocabulary: 8000 tokens", "Character coverage:", "[4/4]", "Training model (20 epochs)",
                "Epoch 1/20: train_loss=", "Epoch 20/20: train_loss=", "Training complete!", "Final metrics:",
                "Train loss:", "Validation loss:", "Training time:", "Artifacts saved:",
                "data/best_model.pt (lowest val_loss)", "data/final_model.pt (last epoch)",
                "data/training_metrics.json", "Validation PASSED", "Sample generation: coherent",
                "Memory (RSS):", "Latency (p95):"]
    if command.startswith("./scripts/train_pipeline.sh --help"):
        return ["--corpus-url", "--vocab-size", "--epochs", "--batch-size", "--learning-rate", "--max-seq-length",
                "--resume", "--skip-corpus", "--skip-tokenizer", "--output-dir", "Exit codes: 0 ok, 1 prerequisites"]
    if command.startswith("./scripts/train_pipeline.sh"):
        return ["[1/4]", "Training complete!", "Validation PASSED"]
    if "generate" in command and "--json" not in command:
        prompt = re.search(r'--prompt "([^"]+)"', command).group(1)
        return [prompt]
    if "json.tool" in command:
        return ['"epoch_history": [', '"final_metrics": {', '"total_training_time"']
    if "metrics['epoch_history']" in command:
        return ["Epochs: ", "Final train loss: ", "Final val loss: ", "Training time: "]
    if "inference_test.json" in command and "python -c" in command:
        return ["RSS: ", "MB (target: ≤ 400 MB)", "Peak: ", "p95 latency: ", "Tokens/sec: "]
    if command.startswith("file "):
        return ["UTF-8"]
    if "create_bundle" in command:
        return ["bundle written to dist/tinytransformer and verified"]
    return []


@pytest.mark.slow
def test_every_quickstart_command_works_verbatim(quickstart_repo, tmp_path):
    commands = quickstart_commands(QUICKSTART.read_text(encoding="utf-8"))
    runnable = [c for c in commands if not c.startswith(NOT_HERE)]
    assert len(runnable) >= 25 and any("--resume" in c for c in runnable), runnable
    repo = quickstart_repo.path
    output_dir = tmp_path / "with space"
    for command in runnable:
        if command == "./scripts/train_pipeline.sh --resume":
            # Interrupted as a reboot would interrupt it: the train stage of a quick run DVC has not seen before is
            # killed (SIGKILL) right after epoch 1's three writes (history, best.pt, last.pt), which follow the
            # renames that set the earlier run's checkpoints aside; --resume then continues it from epoch 1.
            earlier = len(list(repo.glob("data/checkpoints/*.pt"))) + len(list(repo.glob("data/checkpoint_epoch_*.pt")))
            killed = run(quickstart_repo, "./scripts/train_pipeline.sh --epochs 5 --batch-size 64 --learning-rate 0.002",
                         env={**KILL_ENV, "TT_KILL_AT_RENAME": f"train:{earlier + 3}:after"})
            assert killed.returncode == 4, killed.stdout + killed.stderr
        done = run(quickstart_repo, command.replace(PLACEHOLDER, shlex.quote(str(output_dir))))
        shown = done.stdout + done.stderr
        assert done.returncode == 0, f"{command}\n{shown}"
        assert "Traceback" not in shown, f"{command}\n{shown}"
        for text in expected_output(command, done, repo):
            assert text in shown, f"{command} did not print {text!r}:\n{shown}"
        if command == "./scripts/train_pipeline.sh --resume":
            assert "Resuming after epoch 1" in shown and "Epoch 5/5" in shown and "Epoch 1/5" not in shown, shown
        if PLACEHOLDER in command:
            assert {"best_model.pt", "final_model.pt", "bilingual_8k.model", "tinytransformer"} <= {
                p.name for p in output_dir.iterdir()}
            # DVC's outputs are read-only links to its cache; the copies are the user's
            assert all(p.stat().st_mode & stat.S_IWUSR for p in output_dir.rglob("*") if p.is_file())
        if "tee training.log" in command:
            assert "Training complete!" in (repo / "training.log").read_text(encoding="utf-8")
        if "--json" in command and "generate" in command:
            answer = json.loads((repo / "inference_test.json").read_text() if ">" in command else done.stdout)
            assert answer["text"] and answer["metrics"]["latency_p95_ms"] > 0
    for name in FILES_CREATED:
        assert (repo / name).is_file(), name
    history = json.loads((repo / "data/training_metrics.json").read_text())["epoch_history"]
    assert [row["epoch"] for row in history] == list(range(1, 21))
    assert quickstart_repo.dvc("status").stdout.strip() == "Data and pipelines are up to date."


def test_the_quickstart_commands_are_read_whole():
    """Continuation lines and multi-line `python -c` snippets are one command each; comments are not commands."""
    commands = quickstart_commands(QUICKSTART.read_text(encoding="utf-8"))
    assert "./scripts/train_pipeline.sh --epochs 5 --batch-size 64" in commands
    assert ("python -m src.cli.minimal_llm generate \\\n  --prompt \"Hello, write a short story\" \\\n"
            "  --max_tokens 50") in commands
    summary = next(c for c in commands if "epoch_history" in c)
    assert summary.startswith('python -c "') and summary.endswith('"') and "total_training_time" in summary
    assert "file data/corpus_bilingual.txt  # Should say \"UTF-8 Unicode text\"" in commands
    assert not any(c.startswith("#") for c in commands)
