"""Talk to the trained model.

    python -m src.cli.minimal_llm generate --prompt "It is a truth" --max_tokens 50 [--json]

Plain output shows the text as it is generated; --json prints one object at the end. Exit codes: 0 ok,
1 bad input or a missing or damaged model/tokenizer, 5 a budget exceeded in --safety-mode strict,
130 interrupted (Ctrl+C: what was generated so far is kept).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import re
import resource
import sys
import time
from pathlib import Path
from typing import NoReturn

import psutil
import torch

from src import paths
from src.config import ConfigError, load_config
from src.data.tokenizer import EOS_ID, TokenizerError, load_tokenizer
from src.inference.detokenize import Detokenizer
from src.inference.generate import GenerationTimes, Sampling, generate
from src.model.checkpoint import CheckpointError, file_digest, load_model

# --safety-mode strict: hard caps on what one call may ask for.
STRICT_MAX_PROMPT_CHARS = 2000
STRICT_MAX_TOKENS = 256
MAX_TOKENS = 100_000  # the cap outside strict mode: generation never needs more memory, but time does
MAX_SEED = 2**64 - 1  # what torch.Generator.manual_seed takes
EXIT_BAD_INPUT = 1
EXIT_BUDGET = 5
EXIT_INTERRUPTED = 130
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # keeps \t and \n


class UsageError(Exception):
    pass


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a malformed option exiting 1 (the documented code for bad input) instead of its 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_BAD_INPUT, f"error: {message}\n")


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank) of ``values``; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(math.ceil(q / 100 * len(ordered)) - 1, 0)]


def memory_mb() -> tuple[float, float]:
    """(resident set size now, peak resident set size) of this process, in MB."""
    rss = psutil.Process().memory_info().rss / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # Linux reports kB
    return rss, max(peak, rss)  # the kernel updates ru_maxrss lazily: it can trail the current RSS


def release_freed_memory() -> None:
    """Give the heap pages freed while loading back to the system; glibc keeps them otherwise.

    Loading frees the model's initial random weights (the checkpoint's tensors replace them)."""
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
    if not 0 <= args.temperature <= 10:
        raise UsageError(f"--temperature must be in [0, 10] (0 = greedy), got {args.temperature}")
    if args.top_k < 0:
        raise UsageError(f"--top_k must be 0 (off) or more, got {args.top_k}")
    if not 0 < args.top_p <= 1:
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


def load(model_file: Path, tokenizer_file: Path):
    """The model and its tokenizer, refused unless the tokenizer is the one the model was trained with."""
    for needed, stage in ((model_file, "train"), (tokenizer_file, "tokenize")):
        if not Path(needed).is_file():
            raise UsageError(f"{needed} not found: run `dvc repro {stage}` (or `dvc pull`) first")
    try:
        model, meta = load_model(model_file)
        tokenizer = load_tokenizer(tokenizer_file)
    except (CheckpointError, TokenizerError) as exc:
        raise UsageError(str(exc)) from None
    trained_with = (meta.get("fingerprint") or {}).get("tokenizer")
    if file_digest(tokenizer_file) != trained_with:
        raise UsageError(f"{tokenizer_file} is not the tokenizer {model_file} was trained with (its sha256 differs "
                         f"from the one the checkpoint records): they come from different runs")
    return model, meta, tokenizer


def run_generate(args: argparse.Namespace) -> int:
    check_arguments(args)
    strict = args.safety_mode == "strict"
    budgets = None
    if strict:
        try:
            budgets = load_config(args.params).validate.budgets
        except ConfigError as exc:
            raise UsageError(f"--safety-mode strict reads its budgets from {args.params}: {exc}") from None
    shown = (lambda text: _CONTROL.sub("", text)) if strict else (lambda text: text)

    torch.set_num_threads(args.threads)
    load_started = time.perf_counter()
    model, meta, tokenizer = load(args.model, args.tokenizer)
    load_ms = (time.perf_counter() - load_started) * 1000
    release_freed_memory()

    prompt_ids = tokenizer.encode(args.prompt)
    if not prompt_ids:
        raise UsageError("--prompt encodes to no tokens: give some text to continue")
    detokenizer, times, new_ids, interrupted = Detokenizer(tokenizer), GenerationTimes(), [], False
    if not args.json:
        print(shown(args.prompt), end="", flush=True)
    try:
        for token in generate(model, prompt_ids, args.max_tokens, Sampling(args.temperature, args.top_k, args.top_p),
                              torch.Generator().manual_seed(args.seed), None if args.ignore_eos else EOS_ID, times):
            new_ids.append(token)
            text = detokenizer.push(token)
            if text and not args.json:
                print(shown(text), end="", flush=True)
    except KeyboardInterrupt:
        interrupted = True
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
        answer = {"prompt": shown(args.prompt), "text": shown(detokenizer.text), "model": str(args.model),
                  "best_validation_loss": (meta.get("training_state") or {}).get("best_validation_loss"),
                  "metrics": metrics}
        print(json.dumps({**answer, "interrupted": True} if interrupted else answer, ensure_ascii=False))
    if interrupted:
        return EXIT_INTERRUPTED
    if budgets is not None:
        over = [f"{name} {value:.1f} > {limit:g}" for name, value, limit in (
            ("rss_mb", metrics["rss_mb"], budgets.rss_mb), ("peak_mb", metrics["peak_mb"], budgets.peak_mb),
            ("latency_p95_ms", metrics["latency_p95_ms"], budgets.latency_p95_ms)) if value > limit]
        if over:
            print(f"error: over budget ({', '.join(over)}); see validate.budgets in {args.params}", file=sys.stderr)
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
    gen.add_argument("--temperature", type=float, default=0.8, help="0 = greedy, at most 10 (default 0.8)")
    gen.add_argument("--top_k", type=int, default=40, help="sample among the k most likely tokens; 0 = off")
    gen.add_argument("--top_p", type=float, default=0.95, help="nucleus sampling mass in (0, 1]; 1 = off")
    gen.add_argument("--seed", type=int, default=0, help="sampling seed (same seed, same text)")
    gen.add_argument("--model", type=Path, default=paths.BEST_MODEL, help=f"checkpoint (default {paths.BEST_MODEL})")
    gen.add_argument("--tokenizer", type=Path, default=paths.TOKENIZER_MODEL)
    gen.add_argument("--json", action="store_true", help="print the text and metrics as one JSON object")
    gen.add_argument("--safety-mode", dest="safety_mode", choices=("off", "strict"), default="off",
                     help="strict: caps prompt length and max_tokens, enforces the memory/latency budgets, "
                          "strips control characters from what is printed")
    gen.add_argument("--params", type=Path, default=Path("params.yaml"), help="where strict mode reads budgets")
    gen.add_argument("--warmup_tokens", type=int, default=0, help="tokens left out of the latency figures")
    gen.add_argument("--ignore_eos", action="store_true", help="do not stop at the end-of-text token")
    gen.add_argument("--threads", type=int, default=1,
                     help="CPU threads, at most this machine's CPUs (default 1: fastest for one stream)")
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
