"""Generation latency and memory, the bundle's runtime and the PyTorch path side by side, as a user runs them.

    python -m bench.inference [--runs 6] [--tokens 128] [--json]

Each run is a fresh `python -m src.cli.minimal_llm generate --json` process (so RSS is what a user sees),
the two paths alternating, continuing the validation prompt of each corpus language in turn. Reports
each path's median over its runs of every figure: per-token latency p50/p95, time to first token,
tokens/s, RSS and peak memory, load time; and the runtime's tokens/s over the PyTorch path's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from src import paths
from src.config import load_config
from src.pipeline.validate import prompts_for, read_languages

FIGURES = ("latency_p50_ms", "latency_p95_ms", "time_to_first_token_ms", "tokens_per_sec", "rss_mb", "peak_mb",
           "model_load_ms")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=6, help="runs of each path")
    parser.add_argument("--tokens", type=int, default=128, help="new tokens per run")
    parser.add_argument("--warmup_tokens", type=int, default=8)
    parser.add_argument("--bundle", type=Path, default=paths.BUNDLE_DIR)
    parser.add_argument("--model", type=Path, default=paths.BEST_MODEL)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args(argv)

    cfg = load_config(args.params).validate
    prompts = list(prompts_for(read_languages(paths.LANGUAGES), cfg).values())
    sources = {"bundle": ["--bundle", str(args.bundle)], "pytorch": ["--model", str(args.model)]}
    runs: dict[str, list[dict]] = {path: [] for path in sources}
    for run in range(args.runs):
        for path, source in sources.items():
            command = [sys.executable, "-m", "src.cli.minimal_llm", "generate", "--json", "--ignore_eos",
                       "--prompt", prompts[run % len(prompts)], "--max_tokens", str(args.tokens), "--seed", str(run),
                       "--warmup_tokens", str(args.warmup_tokens), *source]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"generation through the {path} path failed: {done.stderr.strip()}")
            runs[path].append(json.loads(done.stdout)["metrics"])
    result = {"benchmark": "inference", "runs": args.runs, "tokens": args.tokens}
    for path, measured in runs.items():
        result[path] = {**{name: round(statistics.median(r[name] for r in measured), 4) for name in FIGURES},
                        "worst_latency_p95_ms": max(r["latency_p95_ms"] for r in measured),
                        "worst_rss_mb": max(r["rss_mb"] for r in measured),
                        "worst_peak_mb": max(r["peak_mb"] for r in measured)}
    result["runtime_speedup"] = round(result["bundle"]["tokens_per_sec"] / result["pytorch"]["tokens_per_sec"], 3)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{'':>24}  {'bundle (numpy)':>15}  {'pytorch':>10}")
        for name in (*FIGURES, "worst_latency_p95_ms", "worst_rss_mb", "worst_peak_mb"):
            print(f"{name:>24}  {result['bundle'][name]:>15}  {result['pytorch'][name]:>10}")
        print(f"{'runtime tokens/s ratio':>24}  {result['runtime_speedup']:>15}")


if __name__ == "__main__":
    main()
