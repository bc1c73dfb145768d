"""Token ids to text as they are generated, so that text can be shown token by token.

sentencepiece decodes a piece to the same text alone as within a sequence, except byte-fallback
pieces: a character outside the vocabulary is spelled as its UTF-8 bytes, one piece per byte, and a
byte alone is not a character. Bytes are therefore held until they complete a character; one that
cannot (an invalid sequence) becomes U+FFFD, as it would in the decoded whole.
"""

from __future__ import annotations

import codecs

import sentencepiece as spm


class Detokenizer:
    """Feed ids one at a time; each ``push`` returns the text they completed (often all of it, sometimes '')."""

    def __init__(self, tokenizer: spm.SentencePieceProcessor):
        self.tokenizer = tokenizer
        self.bytes = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.parts: list[str] = []

    def push(self, token: int) -> str:
        if self.tokenizer.is_byte(token):
            # Byte pieces are spelled "<0xAB>".
            part = self.bytes.decode(bytes([int(self.tokenizer.id_to_piece(token)[1:-1], 16)]))
        else:
            part = self.bytes.decode(b"", final=True) + self.tokenizer.decode([token])
            self.bytes.reset()
        self.parts.append(part)
        return part

    def finish(self) -> str:
        """What is left at the end (an unfinished byte sequence, as U+FFFD)."""
        part = self.bytes.decode(b"", final=True)
        self.bytes.reset()
        self.parts.append(part)
        return part

    @property
    def text(self) -> str:
        """Everything returned so far, joined."""
        return "".join(self.parts)
