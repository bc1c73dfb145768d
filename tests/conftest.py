"""Shared fixtures: the shared corpus, a real HTTP server on 127.0.0.1, and a copy of the project."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
BOOKS = ("pg1342.txt", "pg11.txt", "pg2000.txt")

# DVC must never reach the network from tests.
os.environ["DVC_NO_ANALYTICS"] = "1"


def _shared_corpus_dir() -> Path:
    mirror = os.environ.get("TT_CORPUS_MIRROR", "")
    if mirror and "://" not in mirror and Path(mirror).is_dir():
        return Path(mirror).resolve()
    return (REPO_ROOT.parent / "shared" / "corpus").resolve()


@pytest.fixture(scope="session")
def shared_corpus() -> Path:
    corpus = _shared_corpus_dir()
    if not all((corpus / book).is_file() for book in BOOKS):
        message = f"the Gutenberg copies are not in {corpus} (set TT_CORPUS_MIRROR to their directory)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return corpus


class BookServer(ThreadingHTTPServer):
    """Serves a directory, or misbehaves as ``mode`` says: 404, 500, truncated, slow, flaky."""

    daemon_threads = True

    def __init__(self, directory: Path):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.directory = directory
        self.mode = "ok"
        self.failures_left = 0  # for "flaky": how many 500s before serving normally
        self.requests: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(SimpleHTTPRequestHandler):
    server: BookServer

    def __init__(self, *args, **kwargs):
        super().__init__(*args, directory=str(args[2].directory), **kwargs)

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        server = self.server
        server.requests.append(self.path)
        mode = server.mode
        if mode == "flaky" and server.failures_left > 0:
            server.failures_left -= 1
            mode = "500"
        if mode == "404":
            self.send_error(404, "Not Found")
        elif mode == "500":
            self.send_error(500, "Internal Server Error")
        elif mode in ("truncated", "slow"):
            body = (Path(server.directory) / self.path.lstrip("/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            if mode == "slow":
                time.sleep(1.5)  # past the client's timeout
            self.close_connection = True
        else:
            super().do_GET()


@pytest.fixture
def book_server(shared_corpus: Path):
    server = BookServer(shared_corpus)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def project_params() -> dict:
    return yaml.safe_load((REPO_ROOT / "params.yaml").read_text())


def write_params(directory: Path, overrides: dict | None = None) -> Path:
    """``directory``'s params.yaml (else the project's) with dotted-key ``overrides`` applied."""
    existing = directory / "params.yaml"
    params = yaml.safe_load(existing.read_text()) if existing.is_file() else project_params()
    for dotted, value in (overrides or {}).items():
        node = params
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    path = directory / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def run_module(module: str, cwd: Path, *args: str, env: dict | None = None,
               timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python -m module`` the way DVC does, from ``cwd`` with the project importable."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


PROJECT_FILES = ("src", "scripts", "dvc.yaml", "params.yaml", ".dvc/config", ".dvc/.gitignore", ".dvcignore", ".gitignore",
                 "requirements.txt", "pyproject.toml")


@pytest.fixture
def project_repo(tmp_path: Path):
    """A copy of the project in a fresh git repo, with the venv's tools first on PATH."""
    repo = tmp_path / "project"
    repo.mkdir()
    for name in PROJECT_FILES:
        source = REPO_ROOT / name
        target = repo / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.invalid",
        "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.invalid",
        "DVC_NO_ANALYTICS": "1",
    }
    env.pop("PYTHONPATH", None)

    def sh(*cmd: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
        result = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
        return result

    sh("git", "init", "-q", "-b", "main")
    sh("git", "add", "-A")
    sh("git", "commit", "-q", "-m", "project")

    class Repo:
        path = repo
        environ = env

        @staticmethod
        def run(*cmd: str, check: bool = True, timeout: float = 900):
            return sh(*cmd, check=check, timeout=timeout)

        @staticmethod
        def dvc(*args: str, check: bool = True, timeout: float = 900):
            return sh(sys.executable, "-m", "dvc", *args, check=check, timeout=timeout)

        @staticmethod
        def set_params(overrides: dict) -> None:
            write_params(repo, overrides)

    return Repo


# A model small enough to train in seconds on the real corpus: the whole pipeline, scaled down.
TINY_PARAMS = {
    "vocab_size": 1000, "epochs": 2, "batch_size": 64, "learning_rate": 0.003, "max_seq_length": 32,
    "model.n_layers": 2, "model.n_heads": 2, "model.d_model": 32, "model.d_ff": 64, "model.dropout": 0.0,
    "train.warmup_steps": 20, "train.compile": False, "train.checkpoint_every": 1, "train.eval_batch_size": 256,
    "validate.sample_tokens": 24, "validate.warmup_tokens": 4,
}


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory, shared_corpus) -> Path:
    """A directory where download, tokenize and train have run with TINY_PARAMS (copy before changing it)."""
    workdir = tmp_path_factory.mktemp("tiny_pipeline")
    write_params(workdir, TINY_PARAMS)
    env = {"TT_CORPUS_MIRROR": str(shared_corpus)}
    for stage in ("download", "tokenize", "train"):
        done = run_module(f"src.pipeline.{stage}", workdir, env=env)
        assert done.returncode == 0, f"{stage} failed:\n{done.stderr}"
    return workdir


@pytest.fixture
def tiny_copy(tiny_pipeline: Path, tmp_path: Path) -> Path:
    """A private copy of ``tiny_pipeline`` that a test may change."""
    target = tmp_path / "tiny"
    shutil.copytree(tiny_pipeline, target)
    return target
