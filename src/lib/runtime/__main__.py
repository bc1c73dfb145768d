"""Make or check a bundle.

    python -m src.lib.runtime create_bundle --model data/best_model.pt --tokenizer data/bilingual_8k.model [--out DIR]
    python -m src.lib.runtime verify DIR

create_bundle takes the generation defaults and budgets from --params (params.yaml), and the metrics and book
sources from the pipeline's files where they exist. verify reads the bundle as the runtime does. Exit code 0 when
the bundle is good, 1 (with the file named) when it is not or cannot be made.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from src.lib.runtime.bundle import BundleError
from src.exit_codes import ExitCode
from src.lib.runtime.cli import ArgumentParser

DEFAULT_BUNDLE = Path("dist") / "tinytransformer"


def create(args: argparse.Namespace) -> str:
    # Creating reads a PyTorch checkpoint: the only command here that imports torch.
    from src.config import ConfigError, load_config
    from src.pipeline.bundle import BundleInputError, create_bundle, pipeline_inputs

    try:
        cfg = load_config(args.params)
        inputs = pipeline_inputs(cfg.generation, cfg.validate.budgets, args.model, args.tokenizer, required=False)
        create_bundle(args.model, args.tokenizer, args.out, inputs)
    except (ConfigError, BundleInputError) as exc:
        raise BundleError(str(exc)) from None
    return f"bundle written to {args.out} and verified"


def verify(args: argparse.Namespace) -> str:
    from src.lib.runtime.model import load_bundle

    model = load_bundle(args.bundle)
    return (f"{args.bundle}: verified ({model.config['n_layers']} layers, width {model.config['d_model']}, "
            f"{model.config['vocab_size']} pieces)")


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m src.lib.runtime", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    make = commands.add_parser("create_bundle", help="make a bundle from a checkpoint and its tokenizer")
    make.add_argument("--model", type=Path, required=True, help="a TinyTransformer checkpoint (.pt)")
    make.add_argument("--tokenizer", type=Path, required=True, help="the sentencepiece model it was trained with")
    make.add_argument("--out", type=Path, default=DEFAULT_BUNDLE, help=f"the bundle directory (default {DEFAULT_BUNDLE})")
    make.add_argument("--params", type=Path, default=Path("params.yaml"), help="generation defaults and budgets")
    make.set_defaults(run=create)
    check = commands.add_parser("verify", help="check a bundle: every file against its manifest, and loadable")
    check.add_argument("bundle", type=Path)
    check.set_defaults(run=verify)
    args = parser.parse_args(argv)
    try:
        print(args.run(args))
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitCode.PREREQUISITES
    return 0


if __name__ == "__main__":
    sys.exit(main())
