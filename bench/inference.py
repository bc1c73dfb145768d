"""Generation latency and memory of the trained model, measured the way a user runs it.

    python -m bench.inference [--runs 5] [--tokens 128] [--json]

Each run is a fresh `python -m src.cli.minimal_llm generate --json` process (so RSS is what a user
sees), continuing the English and the Spanish validation prompts in turn with the KV cache. Reports
the median over runs of each figure: per-token latency p50/p95, time to first token, tokens/s, RSS
and peak memory.
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

FIGURES = ("latency_p50_ms", "latency_p95_ms", "time_to_first_token_ms", "tokens_per_sec", "rss_mb", "peak_mb",
           "model_load_ms")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=128, help="new tokens per run")
    parser.add_argument("--warmup_tokens", type=int, default=8)
    parser.add_argument("--model", type=Path, default=paths.BEST_MODEL)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args(argv)

    cfg = load_config(args.params).validate
    prompts = (cfg.prompt_en, cfg.prompt_es)
    runs = []
    for run in range(args.runs):
        command = [sys.executable, "-m", "src.cli.minimal_llm", "generate", "--json", "--ignore_eos",
                   "--prompt", prompts[run % 2], "--max_tokens", str(args.tokens), "--seed", str(run),
                   "--warmup_tokens", str(args.warmup_tokens), "--model", str(args.model)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"generation failed: {done.stderr.strip()}")
        runs.append(json.loads(done.stdout)["metrics"])
    result = {"benchmark": "inference", "runs": args.runs, "tokens": args.tokens,
              **{name: round(statistics.median(r[name] for r in runs), 4) for name in FIGURES},
              "worst_latency_p95_ms": max(r["latency_p95_ms"] for r in runs),
              "worst_rss_mb": max(r["rss_mb"] for r in runs)}
    if args.json:
        print(json.dumps(result))
    else:
        for name, value in result.items():
            print(f"{name:>24}: {value}")


if __name__ == "__main__":
    main()
