"""docs/PERFORMANCE.md, generated from the benchmarks' own ``--json`` output: the one place for speed figures.

    python -m bench.performance_page [--out docs/PERFORMANCE.md] [--only NAME,...] [--save FILE] [--load FILE]

Runs each benchmark in a process of its own, one after another, never two at once (a second busy process
slows a training step several times over), and writes their tables to one Markdown page, dated, with the
CPU, the thread count and the command behind every table. ``--save`` keeps the JSON lines; ``--load``
renders a page from saved ones without measuring again. The inference benchmark needs the pipeline's
bundle and best model (`make repro` first); the others need only params.yaml (and use the token data when
it is there).
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from pathlib import Path
from typing import Callable

from src.atomic import write_atomic
from src.pipeline.output_dir import written_file_problem
from src.training.distributed import processor_name

# The seed's recipe, raced against params.yaml's.
SEED_RECIPE = "optimizer=adamw,schedule=cosine,learning_rate=0.001,warmup_steps=100"
BENCHMARKS = {
    "train_throughput": ["-m", "bench.train_throughput", "--keep-freed-memory", "--json"],
    "train_ablation": ["-m", "bench.train_ablation", "--json"],
    "time_to_loss": ["-m", "bench.time_to_loss", "--baseline", SEED_RECIPE, "--recipe", "", "--json"],
    "inference": ["-m", "bench.inference", "--json"],
    "scale": ["-m", "bench.scale", "--json"],
}


def run_benchmark(name: str) -> dict:
    """One benchmark's JSON line, from a fresh process."""
    print(f"running {name} ...", file=sys.stderr, flush=True)
    done = subprocess.run([sys.executable, *BENCHMARKS[name]], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{name} failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def command(name: str) -> str:
    return "python " + " ".join(f"'{arg}'" if not arg or "," in arg else arg for arg in BENCHMARKS[name])


def table(header: list[str], rows: list[list[object]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header),
            *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)]


def train_throughput(r: dict) -> list[str]:
    rows = [[name, r[name]["ms_per_step"], r[name]["tokens_per_sec"], r[name]["gflops"],
             f"{r[name]['share_of_matmul_peak']:.0%}"] for name in ("project", "reference_fp32_eager")]
    peak = r["matmul_peak_gflops"]
    return ["## Training step",
            "",
            f"The default model's training step (batch {r['batch_size']} x {r['max_seq_length']} tokens, "
            f"{r['parameters']:,} parameters) beside a plain fp32 eager PyTorch step, alternating on the same "
            f"batches. Share of peak: the step's matrix-product FLOPs per second over the machine's fastest "
            f"measured matrix product (fp32 {peak['fp32']}, bf16 {peak['bf16']} GFLOP/s).",
            "",
            *table(["step", "ms per step", "tokens/s", "GFLOP/s", "share of peak"], rows),
            "",
            f"Speedup {r['speedup']}x. Chosen by measurement on this machine: precision **{r['precision']}** "
            f"({r['precision_choice']}); attention **{r['attention']}** ({r['attention_choice']}); compile "
            f"**{r['compile']}** ({r['compile_choice']}).",
            "", f"`{command('train_throughput')}`"]


def train_ablation(r: dict) -> list[str]:
    rows = [[v["variant"], v["ms_per_step"], v["tokens_per_sec"]] for v in r["variants"]]
    return ["## What each optimisation of the step buys",
            "",
            "The step from a textbook fp32 eager one, the project's optimisations added one at a time; the last "
            "row flips dropout.",
            "",
            *table(["variant", "ms per step", "tokens/s"], rows),
            "", f"`{command('train_ablation')}`"]


def time_to_loss(r: dict) -> list[str]:
    rows = []
    for name, recipe in r["recipes"].items():
        rows.append([name, recipe["overrides"] or "params.yaml", recipe.get("steps", "not reached"),
                     recipe.get("seconds", "-"), recipe["best_validation_loss"]])
    return ["## Time to a loss",
            "",
            f"Steps and training seconds (compilation apart: {r['compile_seconds']} s, shared) to validation loss "
            f"{r['target']}, the seed's recipe against today's defaults on the same batches, evaluated every "
            f"{r['eval_every']} steps. Precision {r['precision']}, attention {r['attention']}. The recipes tried "
            "as full-pipeline DVC experiments: [TIME_TO_QUALITY.md](TIME_TO_QUALITY.md).",
            "",
            *table(["recipe", "overrides", f"steps to {r['target']}", "seconds", "best loss seen"], rows),
            "", f"`{command('time_to_loss')}`"]


def inference(r: dict) -> list[str]:
    names = ("latency_p50_ms", "latency_p95_ms", "worst_latency_p95_ms", "time_to_first_token_ms",
             "tokens_per_sec", "rss_mb", "worst_rss_mb", "peak_mb", "worst_peak_mb", "model_load_ms")
    rows = [[name, r["bundle"][name], r["pytorch"][name]] for name in names]
    return ["## Generation",
            "",
            f"`generate --json` in fresh processes, {r['runs']} runs of {r['tokens']} tokens per path, medians "
            "(worst: the largest of the runs): the bundle's torch-free runtime, as a device runs it, beside "
            f"a checkpoint through PyTorch. Runtime tokens/s over PyTorch's: {r['runtime_speedup']}x.",
            "",
            *table(["figure", "bundle (numpy)", "pytorch"], rows),
            "", f"`{command('inference')}`"]


SHELVES = {"repeated": "the default books in whole copies",
           "varied": "the default books in whole copies, each copy's words shuffled within every line (seeded)"}


def scale(r: dict) -> list[str]:
    """bench.scale's table, which it also writes into the page by itself (its own command and date)."""
    rows = []
    for size in r["sizes"]:
        stages = size["stages"]
        cells = [f"{s['seconds']} s, {s['peak_rss_mb']:g} / {s['tree_peak_rss_mb']:g} MB"
                 for s in (stages["download"], stages["tokenize"], stages["train"])]
        disk = size["disk_mb"]
        rows.append([f"{size['size_mb']:g} MB ({size['books']} books)", size["corpus_mb"], f"{size['tokens']:,}",
                     *cells, size["train"]["tokens_per_sec"], size["train"]["evaluation_seconds"],
                     size["train"]["checkpoint_seconds"], disk["books"], disk["data_and_cache"],
                     f"{disk['total'] / disk['books']:.2f}"])
    shelf = SHELVES.get(r["variant"], f"the books {r['variant']}")
    return [f"## Corpus scale: books {r['variant']}",
            "",
            f"Download, tokenize and {r['max_steps']} training steps (evaluating {r['eval_tokens']:,} tokens) through "
            f"`dvc repro -s STAGE` in a fresh project per size; the books: {shelf}, in one directory source in books/. "
            f"Measured on {r['date']}, on {r['cpu']}. Each stage: wall time, then peak RSS of its largest "
            "process / of all its processes together. Disk: books/, and data/ with DVC's cache (hard-linked, each "
            "file counted once), and all of it against the books: the text is the books' own files, read in place, "
            "so what comes on top is the tokens (two bytes a token), the model and its checkpoints.",
            "",
            *table(["books", "corpus MB", "tokens", "download", "tokenize", "train", "train tokens/s",
                    "evaluation s", "checkpoint s", "books MB on disk", "data + cache MB", "disk ÷ books"], rows),
            "", f"`{r['command']}`"]


SECTIONS: dict[str, Callable[[dict], list[str]]] = {"train_throughput": train_throughput,
                                                    "train_ablation": train_ablation,
                                                    "time_to_loss": time_to_loss, "inference": inference,
                                                    "scale": scale}


PAGE_TITLE = "# Performance"
PAGE_MARK = "Generated by `python -m bench.performance_page`"


def is_page(head: bytes) -> bool:
    """Does a file begin as the pages this writes do (so --out may replace it)?"""
    return head.startswith(f"{PAGE_TITLE}\n\n{PAGE_MARK}".encode())


def page(results: dict[str, dict], machine: str, threads: object, date: str) -> str:
    lines = [PAGE_TITLE, "",
             f"{PAGE_MARK} on {date}, on {machine} ({threads} threads), each "
             "benchmark alone on the machine. Figures move with the CPU: re-run the command on yours. How the "
             "step got here: [PERFORMANCE_HISTORY.md](PERFORMANCE_HISTORY.md).", ""]
    for name, render in SECTIONS.items():
        if name in results:
            lines += [*render(results[name]), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/PERFORMANCE.md"))
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated benchmarks to run")
    parser.add_argument("--save", type=Path, help="also write the benchmarks' JSON here, a line each")
    parser.add_argument("--load", type=Path, help="render from JSON lines saved with --save; measure nothing")
    args = parser.parse_args(argv)
    for target, is_ours, kind in ((args.out, is_page, "a page this command wrote"),
                                  (args.save, lambda head: head.startswith(b'{"page":'), "results it saved")):
        problem = target and written_file_problem(target, is_ours, kind)
        if problem:
            parser.error(problem)
    chosen = [name for name in args.only.split(",") if name]
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}: choose from {', '.join(BENCHMARKS)}")
    if args.load:
        saved = [json.loads(line) for line in args.load.read_text().splitlines() if line.strip()]
        results = {r["benchmark"]: r for r in saved if r.get("benchmark") in chosen}
        meta = next((r for r in saved if "page" in r), {"page": {}})["page"]
    else:
        results = {name: run_benchmark(name) for name in chosen}
        threads = results.get("train_throughput", {}).get("threads", "default")
        meta = {"machine": processor_name(), "threads": threads, "date": datetime.date.today().isoformat()}
    meta = {"machine": processor_name(), "threads": "default", "date": datetime.date.today().isoformat(), **meta}
    if args.save:
        lines = [json.dumps({"page": meta}), *(json.dumps(r) for r in results.values())]
        write_atomic(args.save, ("\n".join(lines) + "\n").encode())
    write_atomic(args.out, page(results, meta["machine"], meta["threads"], meta["date"]).encode())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
