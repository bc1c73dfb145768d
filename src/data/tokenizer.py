"""Train and measure the sentencepiece tokenizer.

The corpus is already NFC, so sentencepiece's normaliser is off ("identity") and whitespace is
kept as written; a newline is a piece of its own so the model learns paragraph structure, and
byte fallback means no text is ever unknown. It learns from the training text's lines, a seeded
sample of them when they hold more than tokenizer.sample_mb (``sample_sentences``).
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import sentencepiece as spm

from src.config import ConfigError, TokenizerConfig
from src.atomic import write_atomic
from src.lib.runtime.encode import NEWLINE
from src.paths import unusable_file

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
SPECIAL_TOKENS = {"pad": PAD_ID, "unk": UNK_ID, "bos": BOS_ID, "eos": EOS_ID}
# sentencepiece skips every training sentence longer than this many bytes (its max_sentence_length, passed as
# it defaults): longer lines are given to it in pieces, cut at spaces, so that no text is silently left out.
MAX_SENTENCE_BYTES = 4192
_RESERVED_PIECES = 4 + 1 + 256  # pad, unk, bos, eos; newline; one piece per byte for byte fallback


class TokenizerError(RuntimeError):
    pass


def required_characters(text_lines: Iterable[str], coverage: float) -> int:
    """How many distinct characters sentencepiece must keep to reach ``coverage`` of the text."""
    counts = Counter()
    for line in text_lines:
        counts.update(line)
    total, kept, needed = sum(counts.values()), 0, 0
    for _, n in counts.most_common():
        if total == 0 or kept / total >= coverage:
            break
        kept += n
        needed += 1
    return needed


def sentences(lines: Iterable[str]) -> Iterator[str]:
    """``lines`` as sentencepiece's training sentences: each at most MAX_SENTENCE_BYTES of UTF-8, a longer line
    cut after its last space within the limit (between two characters where it has none)."""
    for line in lines:
        data = line.encode("utf-8")
        while len(data) > MAX_SENTENCE_BYTES:
            cut = data.rfind(b" ", 1, MAX_SENTENCE_BYTES) + 1 or MAX_SENTENCE_BYTES
            while data[cut] & 0xC0 == 0x80:  # a UTF-8 continuation byte: back to where its character starts
                cut -= 1
            yield data[:cut].decode("utf-8")
            data = data[cut:]
        yield data.decode("utf-8")


def sample_sentences(texts: Iterable[str], total_bytes: int, sample_bytes: float, seed: int) -> list[str]:
    """The non-empty lines of ``texts`` (whole lines of the training text, ``total_bytes`` of UTF-8 in all) the
    tokenizer learns from: all of them when they hold at most ``sample_bytes``, else each line kept with
    probability ``sample_bytes`` / ``total_bytes``, one draw per line in corpus order from a generator seeded by
    ``seed``: the same sample on every machine, whatever the texts' sizes, and about ``sample_bytes`` of text
    whatever the corpus's."""
    share = sample_bytes / max(total_bytes, 1)
    draws = np.random.default_rng(seed) if share < 1 else None
    lines: list[str] = []
    for text in texts:
        rows = text.split("\n")
        if rows[-1] == "":
            rows.pop()  # the text ends with a line break, not with an empty line
        if draws is not None:
            rows = [rows[i] for i in np.flatnonzero(draws.random(len(rows)) < share)]
        lines.extend(line for line in rows if line.strip())
    return lines


def train_tokenizer(lines: list[str], cfg: TokenizerConfig, model_file: Path, vocab_file: Path
                    ) -> spm.SentencePieceProcessor:
    """Train on ``lines`` (training text only) and write the model and vocab files atomically."""
    minimum = required_characters(lines, cfg.character_coverage) + _RESERVED_PIECES
    if cfg.vocab_size < minimum:
        raise ConfigError(f"params.yaml: 'vocab_size' = {cfg.vocab_size} is too small for this corpus: "
                          f"it needs at least {minimum} pieces (characters at coverage "
                          f"{cfg.character_coverage}, 256 byte pieces, specials)")
    proto = io.BytesIO()
    spm.set_random_generator_seed(cfg.seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=sentences(lines), model_writer=proto, max_sentence_length=MAX_SENTENCE_BYTES,
            vocab_size=cfg.vocab_size, model_type=cfg.model_type,
            character_coverage=cfg.character_coverage,
            normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
            user_defined_symbols=[NEWLINE], byte_fallback=True, split_digits=True,
            pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
            input_sentence_size=0, num_threads=cfg.threads, minloglevel=2)
    except RuntimeError as exc:
        if "Vocabulary size" in str(exc):
            raise ConfigError(f"params.yaml: 'vocab_size' = {cfg.vocab_size} is too large for this corpus: "
                              f"{exc}") from None
        raise TokenizerError(f"sentencepiece training failed: {exc}") from None
    processor = spm.SentencePieceProcessor(model_proto=proto.getvalue())
    write_atomic(model_file, proto.getvalue())
    # One "piece<TAB>score" line per id, as sentencepiece writes it; the newline piece is spelled \n.
    pieces = [processor.id_to_piece(i).replace(NEWLINE, "\\n") for i in range(processor.get_piece_size())]
    vocab = "".join(f"{piece}\t{processor.get_score(i):g}\n" for i, piece in enumerate(pieces))
    write_atomic(vocab_file, vocab.encode("utf-8"))
    return processor


def load_tokenizer(model_file: Path) -> spm.SentencePieceProcessor:
    """The sentencepiece model in ``model_file``; TokenizerError when it is missing or not such a model."""
    problem = unusable_file(model_file, "tokenize", "tokenizer model ")
    if problem:
        raise TokenizerError(problem)
    try:
        return spm.SentencePieceProcessor(model_file=str(model_file))
    except RuntimeError as exc:
        raise TokenizerError(f"{model_file} is not a sentencepiece model ({exc}): rebuild it with "
                             f"`dvc repro tokenize`") from None


def vocabulary_characters(processor: spm.SentencePieceProcessor) -> set[str]:
    """Characters the vocabulary spells with real pieces (not byte fallback or specials)."""
    chars = {" "}
    for i in range(processor.get_piece_size()):
        if not (processor.is_byte(i) or processor.is_control(i) or processor.is_unknown(i)):
            chars.update(processor.id_to_piece(i).replace("▁", " "))
    return chars


@dataclass
class HeldOutCount:
    """Held-out text as the tokenizer encodes it: its characters, its tokens, and its characters the vocabulary
    spells with real pieces (``vocabulary_characters``). Counts of several texts add up."""
    characters: int = 0
    tokens: int = 0
    in_vocabulary: int = 0

    @classmethod
    def of(cls, text: str, tokens: int, covered: set[str]) -> "HeldOutCount":
        return cls(len(text), tokens, sum(n for ch, n in Counter(text).items() if ch in covered))

    def add(self, other: "HeldOutCount") -> None:
        self.characters += other.characters
        self.tokens += other.tokens
        self.in_vocabulary += other.in_vocabulary

    def metrics(self) -> dict:
        """Characters, tokens, tokens per character and measured character coverage."""
        return {
            "characters": self.characters,
            "tokens": self.tokens,
            "tokens_per_character": round(self.tokens / max(self.characters, 1), 6),
            "character_coverage": round(self.in_vocabulary / max(self.characters, 1), 6),
        }
