"""tokenizer.json from a sentencepiece model (src/data/hf_tokenizer.py): Hugging Face `tokenizers` gives
sentencepiece's ids, for both model types the tokenize stage trains; what it cannot reproduce is refused."""

from __future__ import annotations

import io
import json

import pytest
import sentencepiece as spm
from tokenizers import Tokenizer

from src.config import TokenizerConfig
from src.data.hf_tokenizer import BYTE, CONTROL, NORMAL, UNKNOWN, USER_DEFINED, read_model, special_tokens_map, \
    tokenizer_config, tokenizer_json
from src.data.tokenizer import SPECIAL_TOKENS, TokenizerError, train_tokenizer
from tests.conftest import REPO_ROOT

HARD = ["Café crème, año, façade «¿Qué?»", "日本語の文章 中文", "🙂👍🏽", "1234567890 3.14", "\ttab\tand\nnew\n\nlines",
        "  two  spaces ", " leading", "trailing ", "\n", "x\r\ny", "ÿ\u0300", "a\u00a0b", "<s> </s> <pad>"]


@pytest.fixture(scope="module")
def texts(shared_corpus) -> tuple[list[str], list[str]]:
    """(training lines, test paragraphs): Alice's first part and French notes, then Alice's end."""
    alice = (shared_corpus / "pg11.txt").read_text(encoding="utf-8").replace("\r\n", "\n")
    french = (REPO_ROOT / "tests/fixtures/notes_fr.txt").read_text(encoding="utf-8")
    cut = len(alice) * 9 // 10
    lines = [line for line in (alice[:cut] + french).split("\n") if line.strip()]
    return lines, [p for p in alice[cut:].split("\n\n") if p]


def train(lines: list[str], model_type: str, tmp_path) -> bytes:
    cfg = TokenizerConfig(vocab_size=700, model_type=model_type, character_coverage=0.9995, threads=1, sample_mb=20,
                          seed=3)
    train_tokenizer(lines, cfg, tmp_path / "m.model", tmp_path / "m.vocab")
    return (tmp_path / "m.model").read_bytes()


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_tokenizers_gives_sentencepieces_ids_and_decodes_back(texts, tmp_path, model_type):
    lines, paragraphs = texts
    model = train(lines, model_type, tmp_path)
    ours = spm.SentencePieceProcessor(model_proto=model)
    theirs = Tokenizer.from_str(json.dumps(tokenizer_json(model)))
    assert theirs.get_vocab_size() == ours.get_piece_size() == 700
    for text in paragraphs + HARD[:-1]:
        ids = theirs.encode(text).ids
        assert ids == ours.encode(text), text
        assert theirs.decode(ids) == ours.decode(ids) == text
    assert sum(len(ours.encode(p)) for p in paragraphs) > 5000
    assert any(ours.is_byte(i) for i in theirs.encode(HARD[2]).ids)  # emoji: byte fallback in both


def test_the_model_is_read_piece_by_piece(texts, tmp_path):
    data = train(texts[0], "unigram", tmp_path)
    model, ours = read_model(data), spm.SentencePieceProcessor(model_proto=data)
    assert [p.text for p in model.pieces] == [ours.id_to_piece(i) for i in range(700)]
    assert [p.score for p in model.pieces] == [ours.get_score(i) for i in range(700)]
    kinds = [p.kind for p in model.pieces]
    assert kinds[:5] == [CONTROL, UNKNOWN, CONTROL, CONTROL, USER_DEFINED] and kinds.count(BYTE) == 256
    assert set(kinds[5 + 256:]) == {NORMAL} and (model.model_type, model.byte_fallback, model.unk_id) == (1, True, 1)


def test_special_tokens_and_the_tokenizer_config(texts, tmp_path):
    model = train(texts[0], "unigram", tmp_path)
    names = {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}
    assert special_tokens_map(SPECIAL_TOKENS, model) == names
    assert tokenizer_config(SPECIAL_TOKENS, model) == {"tokenizer_class": "PreTrainedTokenizerFast", **names,
                                                "add_bos_token": False, "add_eos_token": False,
                                                "clean_up_tokenization_spaces": False}
    added = {token["content"]: (token["id"], token["special"]) for token in tokenizer_json(model)["added_tokens"]}
    assert added == {"<pad>": (0, True), "<unk>": (1, True), "<s>": (2, True), "</s>": (3, True)}


def test_a_model_whose_normaliser_it_cannot_reproduce_is_refused(texts):
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts[0]), model_writer=proto, vocab_size=500,
                                   byte_fallback=True, minloglevel=2)  # nmt_nfkc, a dummy prefix: the defaults
    with pytest.raises(TokenizerError, match="only a sentencepiece model with the identity normaliser"):
        tokenizer_json(proto.getvalue())
    with pytest.raises(TokenizerError, match="not a sentencepiece model"):
        tokenizer_json(b"\x0a\xff\xff")
