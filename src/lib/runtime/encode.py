"""Text to token ids, as every part of the project encodes text: line by line."""

from __future__ import annotations

import sentencepiece as spm

NEWLINE = "\n"  # a user-defined piece of every tokenizer the project trains


def encode_text(processor: spm.SentencePieceProcessor, text: str) -> list[int]:
    """``text``'s ids as the project encodes text everywhere: line by line, joined by the newline's id.

    The newline is a piece of its own, always whole, so every segmentation of a text passes through each of its
    newlines, and the best one is each line's best, joined. sentencepiece's ``encode`` of a long text finds it
    only nearly: it adds up a path's scores in single precision, and thousands of pieces in, the sum's rounding
    (0.008 past 65,536) outgrows the gap between two segmentations of a word, which can then fall the other way.
    A line's sum stays small: this is the exact best path (the one Hugging Face `tokenizers` finds, summing in
    double precision), and the ids of a text are the same whole or cut at any line break."""
    lines = text.split(NEWLINE)
    if len(lines) == 1:
        return processor.encode(text)
    newline = processor.piece_to_id(NEWLINE)
    ids: list[int] = []
    for line_ids in processor.encode(lines):
        ids += line_ids
        ids.append(newline)
    ids.pop()
    return ids
