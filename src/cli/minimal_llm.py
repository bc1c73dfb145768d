"""Talk to the trained model.

    python -m src.cli.minimal_llm generate --prompt "It is a truth" --max_tokens 50 [--stop TEXT] [--json]

By default it runs the pipeline's bundle (dist/tinytransformer, or --bundle DIR) through the runtime, with
no PyTorch; --model FILE.pt runs a checkpoint through PyTorch instead. Generation is the Python API's
(src/inference/api.py): the same options give the same text. Plain output shows the text as it is
generated; --json prints one object at the end. Exit codes: 0 ok, 1 bad input or a missing or damaged
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
from pathlib import Path

from src import paths
from src.inference.api import MAX_TOKENS, GenerationError, Generator, Options, check_prompt, check_threads
from src.exit_codes import ExitCode
from src.lib.runtime.budgets import check_budgets, over_budget
from src.lib.runtime.cli import ArgumentParser
from src.lib.runtime.sampling_bounds import MAX_REPETITION_PENALTY

# --safety-mode strict: hard caps on what one call may ask for.
STRICT_MAX_PROMPT_CHARS = 2000
STRICT_MAX_TOKENS = 256
STRICT_MAX_STOPS = 16
STRICT_MAX_STOP_CHARS = 200
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # keeps \t and \n


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


def check_arguments(args: argparse.Namespace) -> Options:
    """The generation options of ``args``; GenerationError naming the first bad one."""
    check_prompt(args.prompt, "--")
    if args.safety_mode == "strict" and not 1 <= args.max_tokens <= STRICT_MAX_TOKENS:
        raise GenerationError(f"--max_tokens must be between 1 and {STRICT_MAX_TOKENS} in --safety-mode strict, "
                              f"got {args.max_tokens}")
    options = Options(args.max_tokens, args.seed, tuple(args.stop), args.temperature, args.top_k, args.top_p,
                      args.repetition_penalty, args.ignore_eos)
    options.check("--")
    if args.warmup_tokens < 0:
        raise GenerationError(f"--warmup_tokens must be 0 or more, got {args.warmup_tokens}")
    check_threads(args.threads, "--")
    if args.safety_mode == "strict":
        if len(args.prompt) > STRICT_MAX_PROMPT_CHARS:
            raise GenerationError(f"--safety-mode strict allows prompts of at most {STRICT_MAX_PROMPT_CHARS} "
                                  f"characters, got {len(args.prompt)}")
        if len(args.stop) > STRICT_MAX_STOPS:
            raise GenerationError(f"--safety-mode strict allows at most {STRICT_MAX_STOPS} --stop, got "
                                  f"{len(args.stop)}")
        if max(map(len, args.stop), default=0) > STRICT_MAX_STOP_CHARS:
            raise GenerationError(f"--safety-mode strict allows a --stop of at most {STRICT_MAX_STOP_CHARS} "
                                  f"characters, got one of {max(map(len, args.stop))}")
    return options


def run_generate(args: argparse.Namespace) -> int:
    options = check_arguments(args)
    strict = args.safety_mode == "strict"
    shown = (lambda text: _CONTROL.sub("", text)) if strict else (lambda text: text)

    load_started = time.perf_counter()
    generator = (Generator.from_checkpoint(args.model, args.tokenizer, args.params, args.threads) if args.model
                 else Generator.from_bundle(args.bundle))
    load_ms = (time.perf_counter() - load_started) * 1000
    model = generator.model
    if strict and not model.budgets:
        raise GenerationError(f"--safety-mode strict needs budgets: {model.source} records none")
    release_freed_memory()

    generation = generator.stream(args.prompt, **vars(options))
    if not args.json:
        print(shown(args.prompt), end="", flush=True)
    ctrl_c = CtrlC()
    try:
        with ctrl_c:
            for piece in generation:
                if not args.json:
                    print(shown(piece), end="", flush=True)
                if ctrl_c.pressed:
                    break
    except KeyboardInterrupt:
        pass
    interrupted = ctrl_c.pressed
    tail = generation.finish()  # after Ctrl+C: the text held back as a possible stop sequence's start
    if not args.json:
        print(shown(tail), flush=True)

    times, new_ids, tokenizer = generation.times, generation.tokens, model.tokenizer
    timed = times.token_latencies_ms[args.warmup_tokens:]
    total_s = (times.time_to_first_token_ms + sum(times.token_latencies_ms)) / 1000
    rss, peak = memory_mb()
    metrics = {
        "rss_mb": round(rss, 2), "peak_mb": round(peak, 2),
        "latency_p50_ms": round(percentile(timed, 50), 4), "latency_p95_ms": round(percentile(timed, 95), 4),
        "time_to_first_token_ms": round(times.time_to_first_token_ms, 3),
        "tokens_per_sec": round(len(new_ids) / total_s, 2) if total_s else 0.0,
        "model_load_ms": round(load_ms, 2), "prompt_tokens": len(generation.prompt_ids), "new_tokens": len(new_ids),
        "timed_tokens": len(timed),
        "unknown_share": round(sum(tokenizer.is_unknown(i) or tokenizer.is_byte(i) for i in new_ids)
                               / max(len(new_ids), 1), 6),
    }
    if args.json:
        answer = {"prompt": shown(args.prompt), "text": shown(generation.text), "model": str(model.source),
                  "runtime": model.runtime, "languages": model.languages,
                  "best_validation_loss": model.best_validation_loss, "metrics": metrics}
        print(json.dumps({**answer, "interrupted": True} if interrupted else answer, ensure_ascii=False))
    if interrupted:
        return ExitCode.INTERRUPTED
    if strict:
        over = over_budget(check_budgets(metrics, model.budgets))
        if over:
            print(f"error: over budget ({', '.join(over)}); see the budgets of {model.source}", file=sys.stderr)
            return ExitCode.VALIDATION
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
    gen.add_argument("--stop", action="append", default=[], metavar="TEXT",
                     help=f"end the text before this (never printed); repeatable, the first one met wins "
                          f"(strict: at most {STRICT_MAX_STOPS}, each at most {STRICT_MAX_STOP_CHARS} characters)")
    gen.add_argument("--repetition_penalty", type=float, default=1.0,
                     help=f"in [1, {MAX_REPETITION_PENALTY:g}]: makes the tokens already in the prompt or text less "
                          f"likely (1 = off, the default)")
    gen.add_argument("--bundle", type=Path, default=paths.BUNDLE_DIR,
                     help=f"a model bundle, run without PyTorch (default {paths.BUNDLE_DIR})")
    gen.add_argument("--model", type=Path, help="a checkpoint (.pt) instead of a bundle, run through PyTorch")
    gen.add_argument("--tokenizer", type=Path,
                     help="the checkpoint's tokenizer (default: the one --params names, data/<names.tokenizer>.model; "
                          "a bundle holds its own)")
    gen.add_argument("--json", action="store_true", help="print the text and metrics as one JSON object")
    gen.add_argument("--safety-mode", dest="safety_mode", choices=("off", "strict"), default="off",
                     help="strict: caps prompt length, max_tokens and --stop, enforces the memory/latency budgets, "
                          "strips control characters from what is printed")
    gen.add_argument("--params", type=Path,
                     help="a checkpoint's generation defaults and budgets (default params.yaml, where it exists; a "
                          "bundle holds its own)")
    gen.add_argument("--warmup_tokens", type=int, default=0, help="tokens left out of the latency figures")
    gen.add_argument("--ignore_eos", action="store_true", help="do not stop at the end-of-text token")
    gen.add_argument("--threads", type=int, default=1,
                     help="CPU threads of the PyTorch path, at most this machine's CPUs (default 1)")
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return run_generate(args)
    except GenerationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitCode.PREREQUISITES
    except KeyboardInterrupt:  # before generation began: nothing to keep
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`... | head`): say nothing more, and keep Python from complaining at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.PREREQUISITES


if __name__ == "__main__":
    sys.exit(main())
