"""Stage `validate`: samples per corpus language, memory and latency budgets, a quality verdict (exit code 5).

    python -m src.pipeline.validate [--params params.yaml]

Each sample runs `python -m src.cli.minimal_llm generate --json` in a fresh process on the bundle, through
the runtime, exactly as a device would: validate.samples_per_language of them per language, each with its own
seed derived from validate's, so the same model gets the same samples, and the same verdict, on every run.
The budgets hold the worst figures of all samples. A language's quality verdict is on the mean of each
measure over its samples, the worst sample reported beside it, so that no single sample decides it. A sample
is in its prompt's language when the character n-gram profile nearest to it, among the profiles the download
stage built from each language's held-out text, is that language's. The metrics are written before the stage
fails.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

from src import paths
from src.atomic import write_json
from src.config import ValidateConfig, load_config
from src.data.language_profile import Profile, nearest_language
from src.lib.runtime.budgets import check_budgets, over_budget
from src.pipeline.stage import StageError, missing_input, run_stage, stage_arguments

log = logging.getLogger(__name__)

_WORD = re.compile(r"\w+", re.UNICODE)


def repetition_rate(text: str) -> float:
    """Share of word 3-grams that repeat an earlier one: 0 for varied text, near 1 for a loop."""
    words = _WORD.findall(text.lower())
    trigrams = list(zip(words, words[1:], words[2:]))
    return 1 - len(set(trigrams)) / len(trigrams) if trigrams else 0.0


def whitespace_share(text: str) -> float:
    return sum(ch.isspace() for ch in text) / len(text) if text else 1.0


def sample_seed(seed: int, language: str, index: int) -> int:
    """The seed of ``language``'s sample ``index``: derived from validate's ``seed``, the same on every run."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{language}/{index}".encode()).digest()[:8], "big")


def sample_quality(text: str, unknown_share: float, language: str, profiles: dict[str, Profile]) -> dict:
    """One sample's measures: is it real text in the prompt's language, not a loop, blank lines or byte soup?"""
    detected, _ = nearest_language(text, profiles)
    return {"repetition_rate": round(repetition_rate(text), 4), "whitespace_share": round(whitespace_share(text), 4),
            "unknown_share": unknown_share, "detected_language": detected, "in_language": detected == language}


def quality_verdict(samples: list[dict], cfg: ValidateConfig) -> dict:
    """A language's verdict on its samples' measures: each measure's mean within its limit ("max" or "min"),
    with the worst sample's value reported beside it. language_share is the share of samples in the language."""
    limits = {"repetition_rate": ("max", cfg.max_repetition), "whitespace_share": ("max", cfg.max_whitespace_share),
              "unknown_share": ("max", cfg.max_unknown_share), "language_share": ("min", cfg.min_language_share)}
    verdict: dict = {}
    for name, (bound, limit) in limits.items():
        values = [float(sample["in_language"]) if name == "language_share" else sample[name] for sample in samples]
        mean = round(sum(values) / len(values), 4)
        verdict[name] = {"mean": mean, "worst": max(values) if bound == "max" else min(values), bound: limit,
                         "passed": mean <= limit if bound == "max" else mean >= limit}
    verdict["detected_languages"] = [sample["detected_language"] for sample in samples]
    verdict["passed"] = all(verdict[name]["passed"] for name in limits)
    return verdict


def failed_measures(verdict: dict) -> str:
    """The measures a language's verdict failed, each as 'name mean x > limit' (or '< limit')."""
    return ", ".join(f"{name} mean {figures['mean']:g} > {figures['max']:g}" if "max" in figures
                     else f"{name} mean {figures['mean']:g} < {figures['min']:g}"
                     for name, figures in verdict.items() if isinstance(figures, dict) and not figures["passed"])


def measure(prompt: str, cfg: ValidateConfig, bundle: Path, seed: int) -> dict:
    """One generation in a fresh process through the user's CLI and the bundle's runtime; its JSON answer."""
    command = [sys.executable, "-m", "src.cli.minimal_llm", "generate", "--json", "--prompt", prompt,
               "--max_tokens", str(cfg.sample_tokens), "--temperature", str(cfg.temperature),
               "--top_k", str(cfg.top_k), "--seed", str(seed), "--warmup_tokens", str(cfg.warmup_tokens),
               "--ignore_eos", "--bundle", str(bundle)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise StageError(f"generation failed (exit {done.returncode}): {done.stderr.strip()}")
    return json.loads(done.stdout)


def read_languages(path: Path) -> dict[str, dict]:
    """The download stage's languages file: per language its opening words and n-gram profile."""
    if not path.is_file():
        raise missing_input(path, "download")
    try:
        languages = json.loads(path.read_text(encoding="utf-8"))
        return {code: {"opening": str(entry["opening"]), "profile": dict(entry["profile"])}
                for code, entry in languages.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StageError(f"{path} is damaged ({type(exc).__name__}: {exc}): rebuild it with "
                         f"`dvc repro --force download`") from None


def prompts_for(languages: dict[str, dict], cfg: ValidateConfig) -> dict[str, str]:
    """validate.prompts for the corpus languages; a language without one: its held-out text's opening words."""
    for unused in sorted(set(cfg.prompts) - set(languages)):
        log.info("validate.prompts.%s is not used: the corpus holds no '%s' text", unused, unused)
    return {language: cfg.prompts.get(language) or entry["opening"] for language, entry in languages.items()}


def validate(cfg: ValidateConfig, *, bundle: Path = paths.BUNDLE_DIR, languages_file: Path = paths.LANGUAGES,
             samples_file: Path = paths.SAMPLES, metrics_file: Path = paths.VALIDATE_METRICS) -> dict:
    if not bundle.is_dir():
        raise missing_input(bundle, "bundle")
    languages = read_languages(languages_file)
    prompts = prompts_for(languages, cfg)
    seeds = {language: [sample_seed(cfg.seed, language, index) for index in range(cfg.samples_per_language)]
             for language in prompts}
    runs = {language: [measure(prompt, cfg, bundle, seed) for seed in seeds[language]]
            for language, prompt in prompts.items()}
    every_run = [run for language_runs in runs.values() for run in language_runs]
    profiles = {language: entry["profile"] for language, entry in languages.items()}

    measured = {language: [sample_quality(run["text"], run["metrics"]["unknown_share"], language, profiles)
                           for run in language_runs] for language, language_runs in runs.items()}
    quality = {language: quality_verdict(samples, cfg) for language, samples in measured.items()}
    worst = {key: max(run["metrics"][key] for run in every_run)
             for key in ("rss_mb", "peak_mb", "latency_p95_ms", "latency_p50_ms", "time_to_first_token_ms")}
    budgets = check_budgets(worst, vars(cfg.budgets))
    metrics = {
        "latency_p50_ms": worst["latency_p50_ms"],
        "time_to_first_token_ms": worst["time_to_first_token_ms"],
        "tokens_per_sec": min(run["metrics"]["tokens_per_sec"] for run in every_run),
        "budgets": budgets,  # rss_mb, peak_mb, latency_p95_ms: the worst sample's value, its limit, passed
        "quality": quality,
        "passed": all(b["passed"] for b in budgets.values()) and all(q["passed"] for q in quality.values()),
    }
    samples = {language: {"prompt": prompts[language],
                          "samples": [{"seed": seed, "text": run["text"], **measures}
                                      for seed, run, measures in zip(seeds[language], runs[language],
                                                                     measured[language])]}
               for language in prompts}
    write_json(samples_file, samples)
    write_json(metrics_file, {"validate": metrics})  # grouped by stage, as every metrics file
    for language, verdict in quality.items():
        first = samples[language]["samples"][0]["text"].replace("\n", " ")[:200]
        log.info("[%s] %s%s", language, prompts[language], first)
        log.info("[%s] means over %d samples: %s", language, cfg.samples_per_language,
                 ", ".join(f"{name} {figures['mean']:g}" for name, figures in verdict.items()
                           if isinstance(figures, dict)))
    log.info("rss %.1f MB, peak %.1f MB, p95 %.3f ms/token, %.0f tokens/s", worst["rss_mb"], worst["peak_mb"],
             worst["latency_p95_ms"], metrics["tokens_per_sec"])
    failures = over_budget(budgets)
    failures += [f"the {language} samples failed the quality check ({failed_measures(verdict)})"
                 for language, verdict in quality.items() if not verdict["passed"]]
    if failures:
        raise StageError("; ".join(failures) + f" (metrics written to {metrics_file})")
    return metrics


def main() -> None:
    args = stage_arguments(__doc__)
    run_stage("validate", lambda: validate(load_config(args.params).validate))


if __name__ == "__main__":
    main()
