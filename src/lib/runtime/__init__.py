"""TinyTransformer's runtime: a verified bundle in, text out, with numpy, sentencepiece and safetensors alone.

    python -m src.lib.runtime create_bundle --model data/best_model.pt --tokenizer data/bilingual_8k.model
    python -m src.lib.runtime verify dist/tinytransformer

Nothing here imports PyTorch (creating a bundle from a checkpoint does, inside ``create_bundle``);
``requirements-runtime.txt`` lists what a device needs.
"""
