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
  --vocab-size <INT>      tokenizer vocabulary size           (params: vocab_size, default 8000)
  --epochs <INT>          training epochs                     (params: epochs)
  --batch-size <INT>      sequences per optimizer step        (params: batch_size)
  --learning-rate <FLOAT> peak learning rate                  (params: learning_rate)
  --max-seq-length <INT>  context length in tokens            (params: max_seq_length, default 128)
  --resume                continue an interrupted training run from its newest checkpoint, with the options
                          it ran with (without it, existing checkpoints are set aside and training starts over)
  --skip-corpus           keep the existing corpus; start from the tokenize stage
  --skip-tokenizer        keep the existing corpus and tokenizer; start from the train stage
  --output-dir <PATH>     copy the models, tokenizer, metrics and the bundle here at the end, outside the
                          project's data/, metrics/, dist/tinytransformer/ and books/ (default: they stay there)
  -v, --verbose           show everything DVC and the stages print (it always goes to logs/train_pipeline.log)
  -h, --help              show this help

Each run trains params.yaml's configuration with its own options on top: the options of an earlier run do
not carry over. With a parameter option the run is a DVC experiment (`dvc exp run -S key=value`): the
workspace holds it until the next run, and `dvc exp show` lists it.
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

options=() corpus_args=() start_stage="" resume=0 output_dir="" mirror="" vocab_override=0 verbose=()
need_value() { [ $# -ge 2 ] && [ -n "$2" ] || fail "$EXIT_PREREQUISITES" "$1 needs a value (see --help)"; }
integer() { [[ "$2" =~ ^[0-9]+$ ]] || fail "$EXIT_PREREQUISITES" "$1 expects a whole number, got '$2'"; }
number() { [[ "$2" =~ ^[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?$ ]] || fail "$EXIT_PREREQUISITES" "$1 expects a number, got '$2'"; }

while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit "$EXIT_OK" ;;
    --corpus-url) need_value "$@"; corpus_args+=(--corpus-url "$2"); shift ;;
    --corpus-language) need_value "$@"; corpus_args+=(--corpus-language "$2"); shift ;;
    --mirror) need_value "$@"; mirror="$2"; shift ;;
    --vocab-size) need_value "$@"; integer "$1" "$2"; options+=("vocab_size=$2"); vocab_override=1; shift ;;
    --epochs) need_value "$@"; integer "$1" "$2"; options+=("epochs=$2"); shift ;;
    --batch-size) need_value "$@"; integer "$1" "$2"; options+=("batch_size=$2"); shift ;;
    --learning-rate) need_value "$@"; number "$1" "$2"; options+=("learning_rate=$2"); shift ;;
    --max-seq-length) need_value "$@"; integer "$1" "$2"; options+=("max_seq_length=$2"); shift ;;
    --resume) resume=1 ;;
    --skip-corpus) [ "$start_stage" = train ] || start_stage=tokenize ;;
    --skip-tokenizer) start_stage=train ;;
    --output-dir) need_value "$@"; output_dir="$2"; shift ;;
    -v|--verbose) verbose=(--verbose) ;;
    *) usage >&2; fail "$EXIT_PREREQUISITES" "unknown option '$1'" ;;
  esac
  shift
done

echo "🚀 TinyTransformer Training Pipeline"
echo "====================================="
echo "[1/4] Checking prerequisites..."

# --- Prerequisites: everything that can be checked is checked before DVC removes any output ----
command -v dvc >/dev/null || fail "$EXIT_PREREQUISITES" "dvc not found: run 'make setup' first"
git rev-parse --git-dir >/dev/null 2>&1 || fail "$EXIT_PREREQUISITES" "not inside a git repository (DVC needs one)"
[ -f params.yaml ] && [ -f dvc.yaml ] || fail "$EXIT_PREREQUISITES" "params.yaml or dvc.yaml missing in $PWD"
if [ -n "$start_stage" ] && { [ -n "$mirror" ] || [ ${#corpus_args[@]} -gt 0 ]; }; then
  fail "$EXIT_PREREQUISITES" "--corpus-url and --mirror have no effect with --skip-corpus or --skip-tokenizer (the corpus is kept)"
fi
if [ "$start_stage" = train ] && [ "$vocab_override" -eq 1 ]; then
  fail "$EXIT_PREREQUISITES" "--vocab-size changes the tokenizer, which --skip-tokenizer keeps: use one or the other"
fi
if [ ${#corpus_args[@]} -gt 0 ]; then
  [ -n "$mirror" ] && export TT_CORPUS_MIRROR="$mirror"
  echo "      Fetching the books of --corpus-url"
  sources=$(python -m src.pipeline.corpus_sources "${corpus_args[@]}" --from-dir "$caller_dir") || exit $?
  options+=("$sources")
fi
# This run's -S values: its options on params.yaml as the user wrote it, and the file names they call for.
prepare=(python -m src.pipeline.run_params prepare)
for kv in "${options[@]}"; do prepare+=(--set "$kv"); done
[ "$resume" -eq 1 ] && prepare+=(--resume)
planned=$("${prepare[@]}") || exit "$EXIT_PREREQUISITES"
mapfile -t overrides < <(printf '%s' "$planned")
check=(python -m src.pipeline.check_params)
for kv in "${overrides[@]}"; do check+=(--set "$kv"); done
[ -n "$mirror" ] && check+=(--mirror "$mirror")
"${check[@]}" || exit "$EXIT_PREREQUISITES"
[ -n "$mirror" ] && export TT_CORPUS_MIRROR="$mirror"
if [ -n "$output_dir" ]; then
  [[ "$output_dir" = /* ]] || output_dir="$caller_dir/$output_dir"
  # Never the project's own outputs, the root or what holds them, nor a bundle's place that is no bundle.
  python -m src.pipeline.output_dir "$output_dir" || exit "$EXIT_PREREQUISITES"
  { mkdir -p -- "$output_dir" 2>/dev/null && [ -d "$output_dir" ] && [ -w "$output_dir" ]; } \
    || fail "$EXIT_PREREQUISITES" "--output-dir $output_dir is not a directory this user can write to"
fi
[ -n "$start_stage" ] && { python -m src.pipeline.run_params skipped "$start_stage" || exit "$EXIT_PREREQUISITES"; }
echo "      ✓ PASS"

# --- Run ------------------------------------------------------------------------------------
if [ ${#overrides[@]} -gt 0 ]; then
  command=(dvc exp run)
  for kv in "${overrides[@]}"; do command+=(-S "$kv"); done
else
  command=(dvc repro)
fi
[ -n "$start_stage" ] && command+=(--downstream "$start_stage")
if [ "$resume" -eq 1 ]; then unset TT_TRAIN_FRESH; else export TT_TRAIN_FRESH=1; fi

log=logs/train_pipeline.log
started=$SECONDS
"${command[@]}" 2>&1 | python -m src.pipeline.report stream --log "$log" "${verbose[@]}"
status=${PIPESTATUS[0]}

if [ "$status" -ne 0 ]; then
  failed=$(sed -n "s/.*failed to reproduce '\([a-z_]*\)'.*/\1/p" "$log" | head -n 1)
  stage_code=$(sed -n "s/.*failed to reproduce '[a-z_]*'.*exited with \([0-9]*\).*/\1/p" "$log" | head -n 1)
  # A documented code passes through; a signal's or DVC's own becomes the failed stage's code.
  if [[ "$stage_code" =~ ^[0-9]+$ ]] && ((stage_code >= EXIT_PREREQUISITES && stage_code <= EXIT_VALIDATION)); then
    code=$stage_code
  else
    code="STAGE_EXIT_${failed:-}"
    code=${!code:-$EXIT_PREREQUISITES}
  fi
  echo "==> FAILED in stage '${failed:-dvc}' after $((SECONDS - started)) s (exit $code); the whole log: $log" >&2
  # DVC removed the failed stage's outputs before running it: put back the last good ones (dvc.lock).
  [ -n "$failed" ] && python -m src.pipeline.restore "$failed"
  exit "$code"
fi

# --- Summary --------------------------------------------------------------------------------
summary=(python -m src.pipeline.report summary --seconds "$((SECONDS - started))")
[ -n "$output_dir" ] && summary+=(--output-dir "$output_dir")
"${summary[@]}" || fail "$EXIT_PREREQUISITES" "the run succeeded, but its summary or the copy to --output-dir failed"
exit "$EXIT_OK"
