"""Stage `validate`: a sample per corpus language, memory and latency budgets, quality checks (exit code 5).

    python -m src.pipeline.validate [--params params.yaml]

Each measurement runs `python -m src.cli.minimal_llm generate --json` in a fresh process on the bundle,
through the runtime, exactly as a device would. The metrics are written before the stage fails on a budget.
A sample is in its prompt's language when the character n-gram profile nearest to it, among the profiles
the download stage built from each language's held-out text, is that language's.
"""

from __future__ import annotations

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


def quality_check(text: str, unknown_share: float, language: str, profiles: dict[str, Profile],
                  cfg: ValidateConfig) -> dict:
    """Is the sample real text in the prompt's language, not a loop, blank lines or byte soup?"""
    detected, _ = nearest_language(text, profiles)
    checks = {
        "repetition_rate": round(repetition_rate(text), 4),
        "whitespace_share": round(whitespace_share(text), 4),
        "unknown_share": unknown_share,
        "detected_language": detected,
        "language_ok": detected == language,
    }
    checks["passed"] = (checks["repetition_rate"] <= cfg.max_repetition
                        and checks["whitespace_share"] <= cfg.max_whitespace_share
                        and unknown_share <= cfg.max_unknown_share and checks["language_ok"])
    return checks


def measure(prompt: str, cfg: ValidateConfig, bundle: Path) -> dict:
    """One generation in a fresh process through the user's CLI and the bundle's runtime; its JSON answer."""
    command = [sys.executable, "-m", "src.cli.minimal_llm", "generate", "--json", "--prompt", prompt,
               "--max_tokens", str(cfg.sample_tokens), "--temperature", str(cfg.temperature),
               "--top_k", str(cfg.top_k), "--seed", str(cfg.seed), "--warmup_tokens", str(cfg.warmup_tokens),
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
    runs = {language: measure(prompt, cfg, bundle) for language, prompt in prompts_for(languages, cfg).items()}
    profiles = {language: entry["profile"] for language, entry in languages.items()}

    quality = {language: quality_check(run["text"], run["metrics"]["unknown_share"], language, profiles, cfg)
               for language, run in runs.items()}
    worst = {key: max(run["metrics"][key] for run in runs.values())
             for key in ("rss_mb", "peak_mb", "latency_p95_ms", "latency_p50_ms", "time_to_first_token_ms")}
    budgets = {
        name: {"value": worst[name], "limit": limit, "passed": worst[name] <= limit}
        for name, limit in (("rss_mb", cfg.budgets.rss_mb), ("peak_mb", cfg.budgets.peak_mb),
                            ("latency_p95_ms", cfg.budgets.latency_p95_ms))
    }
    metrics = {
        **worst,
        "tokens_per_sec": min(run["metrics"]["tokens_per_sec"] for run in runs.values()),
        "best_validation_loss": next(iter(runs.values()))["best_validation_loss"],
        "budgets": budgets,
        "quality": quality,
        "passed": all(b["passed"] for b in budgets.values()) and all(q["passed"] for q in quality.values()),
    }
    samples = {language: {"prompt": run["prompt"], "text": run["text"],
                          "detected_language": quality[language]["detected_language"]}
               for language, run in runs.items()}
    write_json(samples_file, samples)
    write_json(metrics_file, metrics)
    for language, sample in samples.items():
        log.info("[%s] %s%s", language, sample["prompt"], sample["text"].replace("\n", " ")[:200])
    log.info("rss %.1f MB, peak %.1f MB, p95 %.3f ms/token, %.0f tokens/s", worst["rss_mb"], worst["peak_mb"],
             worst["latency_p95_ms"], metrics["tokens_per_sec"])
    failures = [f"{name} {b['value']:g} > {b['limit']:g}" for name, b in budgets.items() if not b["passed"]]
    failures += [f"{lang} sample failed the quality check {q}" for lang, q in quality.items() if not q["passed"]]
    if failures:
        raise StageError("; ".join(failures) + f" (metrics written to {metrics_file})")
    return metrics


def main() -> None:
    args = stage_arguments(__doc__)
    run_stage("validate", lambda: validate(load_config(args.params).validate))


if __name__ == "__main__":
    main()
