"""Generation as a Python API: load a bundle or a checkpoint once, then generate or stream as often as wanted.

    from src.inference.api import Generator
    generator = Generator.load("dist/tinytransformer")  # or a checkpoint: Generator.load("data/best_model.pt")
    print(generator.generate("En un lugar de la Mancha", max_tokens=40, seed=1, stop=["\\n\\n"]))
    for piece in generator.stream("It is a truth", max_tokens=40, repetition_penalty=1.3):
        print(piece, end="", flush=True)

`python -m src.cli.minimal_llm generate` is this API behind options, so the same arguments give the same
text. A bundle runs through the numpy runtime; a checkpoint through PyTorch, imported only then: a device
with a bundle needs no PyTorch. Bad input, a model that cannot be used or an option out of its bounds,
raises GenerationError, whose message says what to do.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from src import paths
from src.lib.runtime.bundle import BundleError
from src.lib.runtime.detokenize import TextStream, byte_values
from src.lib.runtime.encode import encode_text
from src.lib.runtime.model import load_bundle
from src.lib.runtime.sampling import Decoder, GenerationTimes, Sampling, generate
from src.lib.runtime.sampling_bounds import SAMPLING_BOUNDS, out_of_bounds

MAX_TOKENS = 100_000  # generation never needs more memory, but time does
MAX_SEED = 2**64 - 1


class GenerationError(ValueError):
    """A model that cannot be used, or an argument out of its bounds; the message says which, and what to do."""


def _is_number(value: Any, kind: type = numbers.Real) -> bool:
    return not isinstance(value, bool) and isinstance(value, kind)


def check_prompt(prompt: Any, prefix: str = "") -> None:
    """GenerationError unless ``prompt`` is text to continue; ``prefix`` + 'prompt' names it (the CLI's '--')."""
    if not isinstance(prompt, str):
        raise GenerationError(f"{prefix}prompt must be text, got {type(prompt).__name__}")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise GenerationError(f"{prefix}prompt is not valid UTF-8 text") from None
    if not prompt.strip():
        raise GenerationError(f"{prefix}prompt is empty: give the text to continue")


def check_threads(threads: Any, prefix: str = "") -> None:
    cpus = os.cpu_count() or 1
    if not _is_number(threads, numbers.Integral) or not 1 <= threads <= cpus:
        raise GenerationError(f"{prefix}threads must be between 1 and {cpus} (this machine's CPUs), got {threads}")


@dataclass(frozen=True)
class Options:
    """How one call generates; None takes the model's default. ``check`` holds each to its bounds."""
    max_tokens: int = 50
    seed: int = 0  # the same seed, the same text, through the bundle or the checkpoint
    stop: str | Sequence[str] = ()  # the text ends before the first of these it would contain
    temperature: float | None = None  # 0 = greedy
    top_k: int | None = None  # 0 = no cut
    top_p: float | None = None  # 1 = no cut
    repetition_penalty: float = 1.0  # 1 = off
    ignore_eos: bool = False  # run on past the end-of-text token

    def check(self, prefix: str = "") -> None:
        """GenerationError naming the first option out of bounds as ``prefix`` + its name (the CLI's '--')."""
        def bad(name: str, bounds: str, value: Any) -> GenerationError:
            return GenerationError(f"{prefix}{name} must be {bounds}, got {value}")

        if not _is_number(self.max_tokens, numbers.Integral) or not 1 <= self.max_tokens <= MAX_TOKENS:
            raise bad("max_tokens", f"between 1 and {MAX_TOKENS}", self.max_tokens)
        if not _is_number(self.seed, numbers.Integral) or not 0 <= self.seed <= MAX_SEED:
            raise bad("seed", "between 0 and 2**64 - 1", self.seed)
        for name in SAMPLING_BOUNDS:  # None: the model's default, checked where it is read
            value = getattr(self, name)
            if value is not None and (bounds := out_of_bounds(name, value)):
                raise bad(name, bounds, value)
        if not all(isinstance(stop, str) for stop in self.stops):
            raise bad("stop", "text or a list of texts", self.stop)
        for stop in self.stops:
            if not stop:
                raise GenerationError(f"{prefix}stop must not be empty: give the text to stop before")
            try:
                stop.encode("utf-8")
            except UnicodeEncodeError:
                raise GenerationError(f"{prefix}stop is not valid UTF-8 text") from None

    @property
    def stops(self) -> tuple[Any, ...]:
        """The stop sequences, one text or many."""
        return tuple(self.stop) if isinstance(self.stop, (list, tuple)) else (self.stop,)


@dataclass(frozen=True)
class Model:
    """What generation needs, from a bundle or a checkpoint."""
    source: Path
    runtime: str  # "bundle" (numpy) | "pytorch"
    new_decoder: Callable[[], Decoder]  # a decoder with its own KV cache, one for each generation
    tokenizer: Any  # a sentencepiece processor
    defaults: Sampling  # a bundle's generation_config.json, else the params' generation section
    eos_id: int
    best_validation_loss: float | None
    budgets: dict[str, float] | None  # what the model may use on a device (the CLI's --safety-mode strict)
    languages: list[str] | None  # the languages it was trained on, where the bundle records them


class Generation(TextStream):
    """One call's text, piece by piece as it is generated (iterate over it), with its prompt's ids, every id
    generated (``tokens``) and how long each took (``times``). ``finish`` ends it early with what was held back."""

    def __init__(self, model: Model, tokens: Iterator[int], stop: Sequence[str], prompt_ids: list[int],
                 times: GenerationTimes):
        super().__init__(model.tokenizer, tokens, stop)
        self.prompt_ids = prompt_ids
        self.times = times


class Generator:
    """A model loaded once, generating as often as asked."""

    def __init__(self, model: Model):
        self.model = model
        self._byte_values = byte_values(model.tokenizer)

    @classmethod
    def load(cls, path: Path | str, *, tokenizer: Path | str | None = None,
             params: Path | str | None = None, threads: int = 1) -> "Generator":
        """A bundle directory through the runtime, or a checkpoint file (.pt) through PyTorch (see
        ``from_checkpoint`` for the other arguments). A path that is neither is taken for what it looks like: a
        checkpoint when it ends in .pt or is a file, else a bundle; the loader says what is wrong with it."""
        path = Path(path)
        if path.suffix == ".pt" or paths.file_problem(path) in (None, paths.NOT_REGULAR):
            return cls.from_checkpoint(path, tokenizer, params, threads)
        return cls.from_bundle(path)

    @classmethod
    def from_bundle(cls, directory: Path | str) -> "Generator":
        """The bundle in ``directory``, verified, run by the numpy runtime."""
        try:
            bundle = load_bundle(directory)
        except BundleError as exc:
            raise GenerationError(str(exc)) from None
        metrics = bundle.metrics
        return cls(Model(Path(directory), "bundle", bundle.decoder, bundle.tokenizer, bundle.sampling,
                         bundle.config["special_tokens"]["eos"], metrics.get("validation_loss"),
                         metrics.get("budgets"), metrics.get("languages")))

    @classmethod
    def from_checkpoint(cls, model_file: Path | str, tokenizer_file: Path | str | None = None,
                        params: Path | str | None = None, threads: int = 1) -> "Generator":
        """A checkpoint through PyTorch on ``threads`` CPU threads, with the tokenizer it was trained with (refused
        otherwise; None: the one the params name) and the sampling defaults and budgets of ``params``: a file
        given must be there and valid; without one, params.yaml where it exists (else PyTorch's own defaults, no
        budgets, and the tokenizer must be given)."""
        from src.config import PARAMS_FILE, ConfigError, load_config
        from src.data.tokenizer import EOS_ID, TokenizerError, load_tokenizer
        from src.inference.generate import TorchDecoder
        from src.model.checkpoint import CheckpointError, file_digest, load_model

        import torch

        model_file = Path(model_file)
        check_threads(threads)
        torch.set_num_threads(threads)
        try:
            network, meta = load_model(model_file)  # first: a file that is no checkpoint is named as such
        except CheckpointError as exc:
            raise GenerationError(str(exc)) from None
        cfg = None
        if params is not None or paths.file_problem(PARAMS_FILE) != paths.NOT_FOUND:
            try:
                cfg = load_config(PARAMS_FILE if params is None else params)
            except ConfigError as exc:
                raise GenerationError(str(exc)) from None
        if tokenizer_file is None and cfg is None:
            raise GenerationError(f"{PARAMS_FILE} not found: it names the tokenizer, else give the tokenizer file")
        tokenizer_file = Path(tokenizer_file) if tokenizer_file is not None else cfg.tokenizer_name.model
        try:
            tokenizer = load_tokenizer(tokenizer_file)
        except TokenizerError as exc:
            raise GenerationError(str(exc)) from None
        if file_digest(tokenizer_file) != (meta.get("fingerprint") or {}).get("tokenizer"):
            raise GenerationError(f"{tokenizer_file} is not the tokenizer {model_file} was trained with (its sha256 "
                                  f"differs from the one the checkpoint records): they come from different runs")
        defaults, budgets = ((Sampling(**vars(cfg.generation)), vars(cfg.validate.budgets)) if cfg is not None
                             else (Sampling(), None))
        return cls(Model(model_file, "pytorch", lambda: TorchDecoder(network), tokenizer, defaults, EOS_ID,
                         (meta.get("training_state") or {}).get("best_validation_loss"), budgets, None))

    def stream(self, prompt: str, **options: Any) -> Generation:
        """The text that continues ``prompt``, piece by piece as it is generated; ``options`` are Options'."""
        chosen = Options(**options)
        chosen.check()
        check_prompt(prompt)
        prompt_ids = encode_text(self.model.tokenizer, prompt)
        if not prompt_ids:
            raise GenerationError("the prompt encodes to no tokens: give some text to continue")
        defaults = self.model.defaults
        sampling = Sampling(defaults.temperature if chosen.temperature is None else chosen.temperature,
                            defaults.top_k if chosen.top_k is None else chosen.top_k,
                            defaults.top_p if chosen.top_p is None else chosen.top_p, chosen.repetition_penalty)
        times = GenerationTimes()
        tokens = generate(self.model.new_decoder(), prompt_ids, chosen.max_tokens, sampling, chosen.seed,
                          None if chosen.ignore_eos else self.model.eos_id, times, self._byte_values)
        return Generation(self.model, tokens, chosen.stops, prompt_ids, times)

    def generate(self, prompt: str, **options: Any) -> str:
        """The text that continues ``prompt``, whole; ``options`` are Options'."""
        return "".join(self.stream(prompt, **options))
