"""Talk to the trained model.

    python -m src.cli.minimal_llm generate --prompt "It is a truth" --max_tokens 50 [--json]

By default it runs the pipeline's bundle (dist/tinytransformer, or --bundle DIR) through the runtime, with
no PyTorch; --model FILE.pt runs a checkpoint through PyTorch instead. Plain output shows the text as it
is generated; --json prints one object at the end. Exit codes: 0 ok, 1 bad input or a missing or damaged
model/tokenizer/bundle, 5 a budget exceeded in --safety-mode strict, 130 interrupted (Ctrl+C: what was
generated so far is kept).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import re
import resource
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from src import paths
from src.lib.runtime.bundle import BundleError
from src.lib.runtime.cli import EXIT_BAD_INPUT, ArgumentParser
from src.lib.runtime.detokenize import Detokenizer
from src.lib.runtime.model import load_bundle
from src.lib.runtime.sampling import Decoder, GenerationTimes, Sampling, generate

# --safety-mode strict: hard caps on what one call may ask for.
STRICT_MAX_PROMPT_CHARS = 2000
STRICT_MAX_TOKENS = 256
MAX_TOKENS = 100_000  # the cap outside strict mode: generation never needs more memory, but time does
MAX_SEED = 2**64 - 1
EXIT_BUDGET = 5
EXIT_INTERRUPTED = 130
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # keeps \t and \n


class UsageError(Exception):
    pass


@dataclass
class Loaded:
    """What generation needs, from a bundle or a checkpoint."""
    source: Path
    decoder: Decoder
    tokenizer: Any  # a sentencepiece processor
    sampling: Sampling  # the defaults: a bundle's generation.json, else the params' generation section
    best_validation_loss: float | None
    budgets: dict[str, float] | None  # for --safety-mode strict
    eos_id: int
    languages: list[str] | None  # the languages it was trained on, where the bundle records them


class CtrlC:
    """Ctrl+C during generation: remembered, and raised as KeyboardInterrupt as Python does.

    The flag is what stops generation: a C extension that swallows the KeyboardInterrupt (sentencepiece's
    bindings can clear a pending Python error) cannot make the generation run on to its end.
    """

    def __init__(self):
        self.pressed = False

    def _handle(self, signum, frame) -> None:
        self.pressed = True
        raise KeyboardInterrupt

    def __enter__(self) -> "CtrlC":
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        signal.signal(signal.SIGINT, self._previous)


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank) of ``values``; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(math.ceil(q / 100 * len(ordered)) - 1, 0)]


def memory_mb() -> tuple[float, float]:
    """(resident set size now, peak resident set size) of this process, in MB.

    On Linux both come from /proc/self/status (VmRSS, VmHWM): getrusage's peak would also count the memory of
    the process this one was forked from, before it started this program."""
    try:
        status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        rss, peak = (int(status[key].split()[0]) / 2**10 for key in ("VmRSS", "VmHWM"))
    except (OSError, KeyError, ValueError):
        rss = peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # not Linux: bytes (macOS)
    return rss, max(peak, rss)


def release_freed_memory() -> None:
    """Give the heap pages freed while loading back to the system; glibc keeps them otherwise."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to give back this way


def check_arguments(args: argparse.Namespace) -> None:
    try:
        args.prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError("--prompt is not valid UTF-8 text") from None
    if not args.prompt.strip():
        raise UsageError("--prompt is empty: give the text to continue")
    max_tokens = STRICT_MAX_TOKENS if args.safety_mode == "strict" else MAX_TOKENS
    if not 1 <= args.max_tokens <= max_tokens:
        mode = " in --safety-mode strict" if args.safety_mode == "strict" else ""
        raise UsageError(f"--max_tokens must be between 1 and {max_tokens}{mode}, got {args.max_tokens}")
    if args.temperature is not None and not 0 <= args.temperature <= 10:
        raise UsageError(f"--temperature must be in [0, 10] (0 = greedy), got {args.temperature}")
    if args.top_k is not None and args.top_k < 0:
        raise UsageError(f"--top_k must be 0 (off) or more, got {args.top_k}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise UsageError(f"--top_p must be in (0, 1], got {args.top_p}")
    if not 0 <= args.seed <= MAX_SEED:
        raise UsageError(f"--seed must be between 0 and 2**64 - 1, got {args.seed}")
    if args.warmup_tokens < 0:
        raise UsageError(f"--warmup_tokens must be 0 or more, got {args.warmup_tokens}")
    cpus = os.cpu_count() or 1
    if not 1 <= args.threads <= cpus:
        raise UsageError(f"--threads must be between 1 and {cpus} (this machine's CPUs), got {args.threads}")
    if args.safety_mode == "strict" and len(args.prompt) > STRICT_MAX_PROMPT_CHARS:
        raise UsageError(f"--safety-mode strict allows prompts of at most {STRICT_MAX_PROMPT_CHARS} characters, "
                         f"got {len(args.prompt)}")


def from_bundle(directory: Path) -> Loaded:
    try:
        model = load_bundle(directory)
    except BundleError as exc:
        raise UsageError(str(exc)) from None
    return Loaded(directory, model.decoder(), model.tokenizer, model.sampling, model.metrics.get("validation_loss"),
                  model.metrics.get("budgets"), model.config["special_tokens"]["eos"], model.metrics.get("languages"))


def from_checkpoint(model_file: Path, tokenizer_file: Path, params: Path, threads: int) -> Loaded:
    """Through PyTorch; refused unless the tokenizer is the one the model was trained with."""
    from src.config import ConfigError, load_config
    from src.data.tokenizer import EOS_ID as TOKENIZER_EOS_ID
    from src.data.tokenizer import TokenizerError, load_tokenizer
    from src.inference.generate import TorchDecoder
    from src.model.checkpoint import CheckpointError, file_digest, load_model

    import torch

    for needed, stage in ((model_file, "train"), (tokenizer_file, "tokenize")):
        if not Path(needed).is_file():
            raise UsageError(f"{needed} not found: run `dvc repro {stage}` (or `dvc pull`) first")
    torch.set_num_threads(threads)
    try:
        model, meta = load_model(model_file)
        tokenizer = load_tokenizer(tokenizer_file)
    except (CheckpointError, TokenizerError) as exc:
        raise UsageError(str(exc)) from None
    if file_digest(tokenizer_file) != (meta.get("fingerprint") or {}).get("tokenizer"):
        raise UsageError(f"{tokenizer_file} is not the tokenizer {model_file} was trained with (its sha256 differs "
                         f"from the one the checkpoint records): they come from different runs")
    try:
        cfg = load_config(params)
        sampling, budgets = Sampling(**vars(cfg.generation)), vars(cfg.validate.budgets)
    except ConfigError:
        sampling, budgets = Sampling(), None
    return Loaded(model_file, TorchDecoder(model), tokenizer, sampling,
                  (meta.get("training_state") or {}).get("best_validation_loss"), budgets, TOKENIZER_EOS_ID, None)


def run_generate(args: argparse.Namespace) -> int:
    check_arguments(args)
    strict = args.safety_mode == "strict"
    shown = (lambda text: _CONTROL.sub("", text)) if strict else (lambda text: text)

    load_started = time.perf_counter()
    loaded = (from_checkpoint(args.model, args.tokenizer, args.params, args.threads) if args.model
              else from_bundle(args.bundle))
    load_ms = (time.perf_counter() - load_started) * 1000
    if strict and not loaded.budgets:
        raise UsageError(f"--safety-mode strict needs budgets: {loaded.source} records none")
    release_freed_memory()
    defaults = loaded.sampling
    sampling = Sampling(defaults.temperature if args.temperature is None else args.temperature,
                        defaults.top_k if args.top_k is None else args.top_k,
                        defaults.top_p if args.top_p is None else args.top_p)

    tokenizer = loaded.tokenizer
    prompt_ids = tokenizer.encode(args.prompt)
    if not prompt_ids:
        raise UsageError("--prompt encodes to no tokens: give some text to continue")
    detokenizer, times, new_ids = Detokenizer(tokenizer), GenerationTimes(), []
    if not args.json:
        print(shown(args.prompt), end="", flush=True)
    ctrl_c = CtrlC()
    try:
        with ctrl_c:
            for token in generate(loaded.decoder, prompt_ids, args.max_tokens, sampling, args.seed,
                                  None if args.ignore_eos else loaded.eos_id, times):
                new_ids.append(token)
                text = detokenizer.push(token)
                if text and not args.json:
                    print(shown(text), end="", flush=True)
                if ctrl_c.pressed:
                    break
    except KeyboardInterrupt:
        pass
    interrupted = ctrl_c.pressed
    tail = detokenizer.finish()
    if not args.json:
        print(shown(tail), flush=True)

    timed = times.token_latencies_ms[args.warmup_tokens:]
    total_s = (times.time_to_first_token_ms + sum(times.token_latencies_ms)) / 1000
    rss, peak = memory_mb()
    metrics = {
        "rss_mb": round(rss, 2), "peak_mb": round(peak, 2),
        "latency_p50_ms": round(percentile(timed, 50), 4), "latency_p95_ms": round(percentile(timed, 95), 4),
        "time_to_first_token_ms": round(times.time_to_first_token_ms, 3),
        "tokens_per_sec": round(len(new_ids) / total_s, 2) if total_s else 0.0,
        "model_load_ms": round(load_ms, 2), "prompt_tokens": len(prompt_ids), "new_tokens": len(new_ids),
        "timed_tokens": len(timed),
        "unknown_share": round(sum(tokenizer.is_unknown(i) or tokenizer.is_byte(i) for i in new_ids)
                               / max(len(new_ids), 1), 6),
    }
    if args.json:
        answer = {"prompt": shown(args.prompt), "text": shown(detokenizer.text), "model": str(loaded.source),
                  "runtime": "pytorch" if args.model else "bundle", "languages": loaded.languages,
                  "best_validation_loss": loaded.best_validation_loss, "metrics": metrics}
        print(json.dumps({**answer, "interrupted": True} if interrupted else answer, ensure_ascii=False))
    if interrupted:
        return EXIT_INTERRUPTED
    if strict:
        over = [f"{name} {metrics[name]:.1f} > {limit:g}" for name, limit in loaded.budgets.items()
                if metrics[name] > limit]
        if over:
            print(f"error: over budget ({', '.join(over)}); see the budgets of {loaded.source}", file=sys.stderr)
            return EXIT_BUDGET
    return 0


def parser() -> argparse.ArgumentParser:
    root = ArgumentParser(prog="python -m src.cli.minimal_llm", description=__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = root.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    gen = commands.add_parser("generate", help="continue a prompt")
    gen.add_argument("--prompt", required=True, help="text to continue")
    gen.add_argument("--max_tokens", type=int, default=50,
                     help=f"tokens to generate (default 50, at most {MAX_TOKENS}; {STRICT_MAX_TOKENS} when strict)")
    gen.add_argument("--temperature", type=float, help="0 = greedy, at most 10 (default: the model's)")
    gen.add_argument("--top_k", type=int, help="sample among the k most likely tokens; 0 = off (default: the model's)")
    gen.add_argument("--top_p", type=float, help="nucleus sampling mass in (0, 1]; 1 = off (default: the model's)")
    gen.add_argument("--seed", type=int, default=0, help="sampling seed (same seed, same text)")
    gen.add_argument("--bundle", type=Path, default=paths.BUNDLE_DIR,
                     help=f"a model bundle, run without PyTorch (default {paths.BUNDLE_DIR})")
    gen.add_argument("--model", type=Path, help="a checkpoint (.pt) instead of a bundle, run through PyTorch")
    gen.add_argument("--tokenizer", type=Path, default=paths.TOKENIZER_MODEL,
                     help=f"the checkpoint's tokenizer (default {paths.TOKENIZER_MODEL}; a bundle holds its own)")
    gen.add_argument("--json", action="store_true", help="print the text and metrics as one JSON object")
    gen.add_argument("--safety-mode", dest="safety_mode", choices=("off", "strict"), default="off",
                     help="strict: caps prompt length and max_tokens, enforces the memory/latency budgets, "
                          "strips control characters from what is printed")
    gen.add_argument("--params", type=Path, default=Path("params.yaml"),
                     help="a checkpoint's generation defaults and budgets (a bundle holds its own)")
    gen.add_argument("--warmup_tokens", type=int, default=0, help="tokens left out of the latency figures")
    gen.add_argument("--ignore_eos", action="store_true", help="do not stop at the end-of-text token")
    gen.add_argument("--threads", type=int, default=1,
                     help="CPU threads of the PyTorch path, at most this machine's CPUs (default 1)")
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return run_generate(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:  # before generation began: nothing to keep
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`... | head`): say nothing more, and keep Python from complaining at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
