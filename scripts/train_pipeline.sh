#!/usr/bin/env bash
# One command for the whole pipeline. It drives DVC (`dvc repro`, or `dvc exp run -S ...` when a
# parameter is overridden), so every run is cached and recorded like any other DVC run.
set -uo pipefail

usage() {
  cat <<'EOF'
Usage: ./scripts/train_pipeline.sh [options]

Runs download -> tokenize -> train -> bundle -> validate through DVC and prints a summary. Every option and
params.yaml are checked before DVC starts; when a stage fails, the outputs DVC removed before running it
are put back from its cache (python -m src.pipeline.restore STAGE).

Options:
  --corpus-url URL|PATH   train on this book (repeatable): an http(s) URL or a local file. Each is fetched,
                          its sha256 and language printed, and the run is a DVC experiment with these books
                          as corpus.sources (a Gutenberg file loses its header and licence; other text is
                          kept whole)
  --corpus-language CODE  the ISO 639-1 language of the --corpus-url just before (where its text does not
                          name it in a Gutenberg header)
  --mirror URL|DIR        take the http(s) books from this mirror (sets TT_CORPUS_MIRROR)
  --vocab-size N          tokenizer vocabulary size           (params: vocab_size)
  --epochs N              training epochs                     (params: epochs)
  --batch-size N          sequences per optimizer step        (params: batch_size)
  --learning-rate X       peak learning rate                  (params: learning_rate)
  --max-seq-length N      context length in tokens            (params: max_seq_length)
  --resume                continue an interrupted training run from its newest checkpoint
                          (without it, existing checkpoints are set aside and training starts over)
  --skip-corpus           keep the existing corpus; start from the tokenize stage
  --skip-tokenizer        keep the existing corpus and tokenizer; start from the train stage
  --output-dir DIR        copy the models, tokenizer, metrics and the bundle here at the end
  -h, --help              show this help

With a parameter option the run is a DVC experiment (`dvc exp run -S key=value`): the workspace
keeps the new values, and `dvc exp show` lists it.
EOF
  echo
  echo "Exit codes: $EXIT_CODES_SUMMARY."
}

fail() { echo "error: $2" >&2; exit "$1"; }

caller_dir=$PWD
# Before Python is found, 1 (prerequisites) is the only code; then src/exit_codes.py defines them all.
cd "$(dirname "$0")/.." || exit 1
[ -x .venv/bin/python ] && PATH="$PWD/.venv/bin:$PATH"
command -v python >/dev/null || { echo "error: python not found: run 'make setup' first" >&2; exit 1; }
eval "$(python -m src.exit_codes)" || exit 1
export DVC_NO_ANALYTICS="${DVC_NO_ANALYTICS:-1}"

overrides=() corpus_args=() start_stage="" resume=0 output_dir="" mirror="" vocab_override=0
need_value() { [ $# -ge 2 ] && [ -n "$2" ] || fail "$EXIT_PREREQUISITES" "$1 needs a value (see --help)"; }
integer() { [[ "$2" =~ ^[0-9]+$ ]] || fail "$EXIT_PREREQUISITES" "$1 expects a whole number, got '$2'"; }
number() { [[ "$2" =~ ^[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?$ ]] || fail "$EXIT_PREREQUISITES" "$1 expects a number, got '$2'"; }

while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit "$EXIT_OK" ;;
    --corpus-url) need_value "$@"; corpus_args+=(--corpus-url "$2"); shift ;;
    --corpus-language) need_value "$@"; corpus_args+=(--corpus-language "$2"); shift ;;
    --mirror) need_value "$@"; mirror="$2"; shift ;;
    --vocab-size) need_value "$@"; integer "$1" "$2"; overrides+=("vocab_size=$2"); vocab_override=1; shift ;;
    --epochs) need_value "$@"; integer "$1" "$2"; overrides+=("epochs=$2"); shift ;;
    --batch-size) need_value "$@"; integer "$1" "$2"; overrides+=("batch_size=$2"); shift ;;
    --learning-rate) need_value "$@"; number "$1" "$2"; overrides+=("learning_rate=$2"); shift ;;
    --max-seq-length) need_value "$@"; integer "$1" "$2"; overrides+=("max_seq_length=$2"); shift ;;
    --resume) resume=1 ;;
    --skip-corpus) [ "$start_stage" = train ] || start_stage=tokenize ;;
    --skip-tokenizer) start_stage=train ;;
    --output-dir) need_value "$@"; output_dir="$2"; shift ;;
    *) usage >&2; fail "$EXIT_PREREQUISITES" "unknown option '$1'" ;;
  esac
  shift
done

# --- Prerequisites: everything that can be checked is checked before DVC removes any output ----
command -v dvc >/dev/null || fail "$EXIT_PREREQUISITES" "dvc not found: run 'make setup' first"
git rev-parse --git-dir >/dev/null 2>&1 || fail "$EXIT_PREREQUISITES" "not inside a git repository (DVC needs one)"
[ -f params.yaml ] && [ -f dvc.yaml ] || fail "$EXIT_PREREQUISITES" "params.yaml or dvc.yaml missing in $PWD"
if [ -n "$start_stage" ] && { [ -n "$mirror" ] || [ ${#corpus_args[@]} -gt 0 ]; }; then
  fail "$EXIT_PREREQUISITES" "--corpus-url and --mirror have no effect with --skip-corpus or --skip-tokenizer (the corpus is kept)"
fi
if [ ${#corpus_args[@]} -gt 0 ]; then
  [ -n "$mirror" ] && export TT_CORPUS_MIRROR="$mirror"
  echo "==> Fetching the books of --corpus-url"
  sources=$(python -m src.pipeline.corpus_sources "${corpus_args[@]}" --from-dir "$caller_dir") || exit $?
  overrides+=("$sources")
fi
if [ "$start_stage" = train ] && [ "$vocab_override" -eq 1 ]; then
  fail "$EXIT_PREREQUISITES" "--vocab-size changes the tokenizer, which --skip-tokenizer keeps: use one or the other"
fi
check=(python -m src.pipeline.check_params)
for kv in "${overrides[@]}"; do check+=(--set "$kv"); done
[ -n "$mirror" ] && check+=(--mirror "$mirror")
"${check[@]}" || exit "$EXIT_PREREQUISITES"
[ -n "$mirror" ] && export TT_CORPUS_MIRROR="$mirror"
if [ -n "$output_dir" ]; then
  { mkdir -p -- "$output_dir" 2>/dev/null && [ -d "$output_dir" ] && [ -w "$output_dir" ]; } \
    || fail "$EXIT_PREREQUISITES" "--output-dir $output_dir is not a directory this user can write to"
fi
if [ -n "$start_stage" ]; then
  required=(data/corpus.txt data/corpus_index.json)
  [ "$start_stage" = train ] && required+=(data/tokenizer.model data/tokens/train.bin data/tokens/validation.bin)
  for file in "${required[@]}"; do
    [ -f "$file" ] || fail "$EXIT_PREREQUISITES" "$file is missing, so it cannot be skipped: run without --skip-* first"
  done
fi

# --- Run ------------------------------------------------------------------------------------
phase_of() {
  case "$1" in
    check_params) echo "Checking params" ;; download) echo "Phase 1/4: Corpus" ;; tokenize) echo "Phase 2/4: Tokenizer" ;;
    train) echo "Phase 3/4: Training" ;; bundle) echo "Phase 3/4: Training (bundle)" ;;
    validate) echo "Phase 4/4: Validation" ;; *) echo "$1" ;;
  esac
}
code_of() { local code="STAGE_EXIT_$1"; echo "${!code:-$EXIT_PREREQUISITES}"; }

if [ ${#overrides[@]} -gt 0 ]; then
  command=(dvc exp run)
  for kv in "${overrides[@]}"; do command+=(-S "$kv"); done
else
  command=(dvc repro)
fi
[ -n "$start_stage" ] && command+=(--downstream "$start_stage")
if [ "$resume" -eq 1 ]; then unset TT_TRAIN_FRESH; else export TT_TRAIN_FRESH=1; fi

log=$(mktemp "${TMPDIR:-/tmp}/train_pipeline.XXXXXX")
trap 'rm -f "$log"' EXIT
echo "==> ${command[*]}"
started=$SECONDS
"${command[@]}" 2>&1 | tee "$log" | while IFS= read -r line; do
  if [[ "$line" =~ ^Running\ stage\ \'([a-z_]+)\' ]]; then
    echo "==> $(phase_of "${BASH_REMATCH[1]}") (stage '${BASH_REMATCH[1]}')"
  elif [[ "$line" =~ ^Stage\ \'([a-z_]+)\'\ (didn\'t\ change|is\ cached) ]]; then
    echo "==> $(phase_of "${BASH_REMATCH[1]}"): up to date, nothing to do"
  fi
  echo "$line"
done
status=${PIPESTATUS[0]}

if [ "$status" -ne 0 ]; then
  failed=$(sed -n "s/.*failed to reproduce '\([a-z_]*\)'.*/\1/p" "$log" | head -n 1)
  stage_code=$(sed -n "s/.*failed to reproduce '[a-z_]*'.*exited with \([0-9]*\).*/\1/p" "$log" | head -n 1)
  # A documented code passes through; a signal's or DVC's own becomes the failed stage's code.
  if [[ "$stage_code" =~ ^[0-9]+$ ]] && ((stage_code >= EXIT_PREREQUISITES && stage_code <= EXIT_VALIDATION)); then
    code=$stage_code
  else
    code=$(code_of "$failed")
  fi
  echo "==> FAILED in $(phase_of "${failed:-dvc}") after $((SECONDS - started)) s (exit $code)" >&2
  # DVC removed the failed stage's outputs before running it: put back the last good ones (dvc.lock).
  [ -n "$failed" ] && python -m src.pipeline.restore "$failed"
  exit "$code"
fi

# --- Summary --------------------------------------------------------------------------------
if [ -n "$output_dir" ]; then
  cp data/best_model.pt data/final_model.pt data/tokenizer.model data/tokenizer.vocab metrics/*.json "$output_dir"/ \
    && cp -r dist/tinytransformer "$output_dir"/ \
    || fail "$EXIT_PREREQUISITES" "copying the artifacts to $output_dir failed"
fi
python - "$((SECONDS - started))" "${output_dir:-data}" <<'EOF'
import json, sys
from pathlib import Path
seconds, artifacts = sys.argv[1], sys.argv[2]
train = json.loads(Path("metrics/train.json").read_text())["train"]
speed = json.loads(Path("metrics/train_speed.json").read_text())["train_speed"]
validate = json.loads(Path("metrics/validate.json").read_text())["validate"]
print("==> Summary")
print(f"  epochs {train['epochs']}, final train loss {train['final_train_loss']:.4f}, "
      f"final validation loss {train['final_validation_loss']:.4f}, best {train['best_validation_loss']:.4f} "
      f"(epoch {train['best_epoch']}), {train['best_validation_bits_per_byte']:.3f} bits/byte")
print(f"  training time {speed['seconds']:.0f} s ({speed['tokens_per_sec']:.0f} tokens/s); "
      f"this run {seconds} s")
for name, budget in validate["budgets"].items():
    print(f"  budget {name}: {budget['value']:g} <= {budget['limit']:g} {'ok' if budget['passed'] else 'FAILED'}")
print(f"  artifacts: {artifacts}/best_model.pt, {artifacts}/final_model.pt, {artifacts}/tokenizer.model; "
      f"the bundle: {artifacts if artifacts != 'data' else 'dist'}/tinytransformer")
EOF
exit "$EXIT_OK"
