"""The sentencepiece tokenizer as Hugging Face `tokenizers` reads it: tokenizer.json and its two small companions.

The JSON is written here from the sentencepiece model's own pieces, scores and settings, so neither the pipeline
nor the runtime needs `tokenizers` or `transformers`; tests hold its ids to sentencepiece's. It follows the
model the way sentencepiece encodes:

- the normaliser is sentencepiece's with the "identity" rule: only a space becomes U+2581; no dummy prefix;
- a Unigram model keeps every piece with its score (Viterbi over the same lattice); a BPE model gets the
  merges of its normal pieces, ranked by score as sentencepiece merges them;
- the user-defined pieces (the newline) are cut out of the text first, as sentencepiece always emits them whole;
- byte fallback spells what the vocabulary lacks as its UTF-8 bytes; decoding turns U+2581 back into a space
  and the bytes back into characters;
- the control pieces and the unknown piece are special tokens: never produced from text by sentencepiece, they
  are read as themselves by `transformers` when a text spells them ("<s>"), as it does for every model; so is,
  by a Unigram model, a byte piece spelled out ("<0x41>"). Only such text tokenizes otherwise than
  sentencepiece's.

sentencepiece's model file is a protocol buffer; the few fields read here are decoded by ``_fields`` rather than
through protobuf, which nothing else in the project needs.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from src.data.tokenizer import TokenizerError

# sentencepiece_model.proto: ModelProto.pieces = 1, .trainer_spec = 2, .normalizer_spec = 3; SentencePiece.piece = 1,
# .score = 2, .type = 3; TrainerSpec.model_type = 3, .byte_fallback = 35, .unk_id = 40; NormalizerSpec.name = 1,
# .precompiled_charsmap = 2, .add_dummy_prefix = 3, .remove_extra_whitespaces = 4, .escape_whitespaces = 5.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
UNIGRAM, BPE = 1, 2
SPACE = "\u2581"
_MESSAGE, _VARINT, _FIXED32, _FIXED64 = 2, 0, 5, 1


@dataclass(frozen=True)
class Piece:
    text: str
    score: float
    kind: int  # NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED or BYTE


@dataclass(frozen=True)
class SentencePieceModel:
    """What of a sentencepiece model decides how it encodes."""
    pieces: list[Piece]
    model_type: int
    byte_fallback: bool
    unk_id: int
    normalizer: dict[int, Any]  # NormalizerSpec's fields, by number, where the file sets them


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        value, shift, at = value | (byte & 0x7F) << shift, shift + 7, at + 1
        if byte < 0x80:
            return value, at


def _fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of each field of one protocol buffer message, in order."""
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, at = _varint(data, at)
        elif wire == _MESSAGE:
            size, at = _varint(data, at)
            value, at = data[at:at + size], at + size
        elif wire in (_FIXED32, _FIXED64):
            size = 4 if wire == _FIXED32 else 8
            value, at = data[at:at + size], at + size
        else:
            raise ValueError(f"wire type {wire}")
        if at > len(data):
            raise ValueError("truncated")
        yield number, value


def read_model(data: bytes) -> SentencePieceModel:
    """The pieces and settings of the sentencepiece model ``data``; TokenizerError when it is not one."""
    pieces, trainer, normalizer = [], {}, {}
    try:
        for number, value in _fields(data):
            if number == 1:
                piece = dict(_fields(value))
                pieces.append(Piece(piece.get(1, b"").decode("utf-8"), struct.unpack("<f", piece.get(2, b"\0" * 4))[0],
                                    piece.get(3, NORMAL)))
            elif number == 2:
                trainer = dict(_fields(value))
            elif number == 3:
                normalizer = dict(_fields(value))
    except (ValueError, IndexError, struct.error) as exc:  # UnicodeDecodeError is a ValueError
        raise TokenizerError(f"not a sentencepiece model ({exc})") from None
    return SentencePieceModel(pieces, trainer.get(3, UNIGRAM), bool(trainer.get(35, 0)), trainer.get(40, 0),
                              normalizer)


def _check_encodable(model: SentencePieceModel) -> None:
    """Refuse what this JSON does not reproduce: the settings src/data/tokenizer.py never uses."""
    spec = model.normalizer
    if spec.get(2) or spec.get(3, 1) or spec.get(4, 1) or not spec.get(5, 1):
        raise TokenizerError("only a sentencepiece model with the identity normaliser, no dummy prefix and no "
                             "whitespace removal (as the tokenize stage trains) can be written as tokenizer.json")
    if model.model_type not in (UNIGRAM, BPE):
        raise TokenizerError(f"sentencepiece model type {model.model_type}: only unigram and bpe are written as "
                             f"tokenizer.json")


def _bpe(model: SentencePieceModel, user_defined: list[str]) -> dict[str, Any]:
    """sentencepiece's BPE as `tokenizers`' BPE: each normal piece made of two normal pieces is a merge, the
    higher its score the earlier (ties by id); user-defined pieces are never merged."""
    normal = {piece.text: (-piece.score, i) for i, piece in enumerate(model.pieces) if piece.kind == NORMAL}
    merges = sorted((rank, text[:cut], text[cut:]) for text, rank in normal.items() for cut in range(1, len(text))
                    if text[:cut] in normal and text[cut:] in normal)
    return {"type": "BPE", "dropout": None, "unk_token": model.pieces[model.unk_id].text,
            "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": True,
            "byte_fallback": model.byte_fallback, "ignore_merges": bool(user_defined),
            "vocab": {piece.text: i for i, piece in enumerate(model.pieces)},
            "merges": [[left, right] for _, left, right in merges]}


def tokenizer_json(data: bytes) -> dict[str, Any]:
    """tokenizer.json of the sentencepiece model ``data``: the same ids for every text (see the module's note)."""
    model = read_model(data)
    _check_encodable(model)
    user_defined = [piece.text for piece in model.pieces if piece.kind == USER_DEFINED]
    special = (CONTROL, UNKNOWN)
    # A BPE model's user-defined pieces are added tokens too: its merges never build them.
    added = [{"id": i, "content": piece.text, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": piece.kind in special}
             for i, piece in enumerate(model.pieces)
             if piece.kind in special or (piece.kind == USER_DEFINED and model.model_type == BPE)]
    if model.model_type == UNIGRAM:
        encoder = {"type": "Unigram", "unk_id": model.unk_id,
                   "vocab": [[piece.text, piece.score] for piece in model.pieces], "byte_fallback": model.byte_fallback}
    else:
        encoder = _bpe(model, user_defined)
    isolate = {"type": "Split", "behavior": "Isolated", "invert": False,
               "pattern": {"Regex": "|".join(re.escape(text) for text in sorted(user_defined, key=len, reverse=True))}}
    decoders = [{"type": "Replace", "pattern": {"String": SPACE}, "content": " "},
                *([{"type": "ByteFallback"}, {"type": "Fuse"}] if model.byte_fallback else [])]
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
            "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": SPACE},
            "pre_tokenizer": isolate if user_defined else None, "model": encoder, "post_processor": None,
            "decoder": {"type": "Sequence", "decoders": decoders}}


def special_tokens_map(special_ids: dict[str, int], data: bytes) -> dict[str, str]:
    """special_tokens_map.json: the pieces of the pad, unk, bos and eos ids (``special_ids``, by those names)."""
    pieces = read_model(data).pieces
    return {f"{name}_token": pieces[i].text for name, i in sorted(special_ids.items())}


def tokenizer_config(special_ids: dict[str, int], data: bytes) -> dict[str, Any]:
    """tokenizer_config.json: the fast tokenizer of tokenizer.json, adding no token to the text and changing no
    space when decoding (the model reads text as sentencepiece encodes it: no bos)."""
    return {"tokenizer_class": "PreTrainedTokenizerFast", **special_tokens_map(special_ids, data),
            "add_bos_token": False, "add_eos_token": False, "clean_up_tokenization_spaces": False}
