import sentencepiece as spm
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from src.config import ConfigError, TokenizerConfig
from src.data.corpus import range_text
from src.data.gutenberg import read_book
from tests.conftest import index_books
from src.data.tokenizer import (MAX_SENTENCE_BYTES, NEWLINE, HeldOutCount, required_characters, sample_sentences,
                                sentences, train_tokenizer, vocabulary_characters)


@pytest.fixture(scope="module")
def small_corpus(shared_corpus, tmp_path_factory):
    """The first 150 kB of an English and a Spanish book: enough for a 1000-piece vocabulary."""
    books = [("alice", "en", read_book((shared_corpus / "pg11.txt").read_bytes(), "pg11").text[:150_000]),
             ("quijote", "es", read_book((shared_corpus / "pg2000.txt").read_bytes(), "pg2000").text[:150_000])]
    splits = index_books(tmp_path_factory.mktemp("books"), books, 0.1)
    lines = [line for s in splits for line in range_text(s.train).split("\n") if line.strip()]
    held_out = {s.language: range_text(s.validation) for s in splits}
    return lines, held_out


def cfg(**changes):
    return TokenizerConfig(**{"vocab_size": 1000, "model_type": "unigram", "character_coverage": 0.9995, "threads": 2,
                              "sample_mb": 20, "seed": 7, **changes})


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_trains_writes_and_round_trips(small_corpus, tmp_path, model_type):
    lines, held_out = small_corpus
    model, vocab = tmp_path / "tok.model", tmp_path / "tok.vocab"
    processor = train_tokenizer(lines, cfg(model_type=model_type), model, vocab)
    assert processor.get_piece_size() == 1000
    loaded = spm.SentencePieceProcessor(model_file=str(model))
    assert len(vocab.read_text(encoding="utf-8").splitlines()) == 1000
    text = "“Curiouser and curiouser!” cried Alice.\n\n—¿Qué dices, Sancho?  ✓"
    assert loaded.decode(loaded.encode(text)) == text  # whitespace, newlines and unseen characters survive
    assert NEWLINE in loaded.encode(text, out_type=str)
    assert loaded.unk_id() not in loaded.encode(text)  # byte fallback: nothing is unknown


def test_training_is_deterministic(small_corpus, tmp_path):
    lines, _ = small_corpus
    train_tokenizer(lines, cfg(), tmp_path / "a.model", tmp_path / "a.vocab")
    train_tokenizer(lines, cfg(), tmp_path / "b.model", tmp_path / "b.vocab")
    assert (tmp_path / "a.model").read_bytes() == (tmp_path / "b.model").read_bytes()


def test_the_tokenizer_depends_on_its_threads_which_are_a_param_not_the_machines_cores(small_corpus, tmp_path):
    """sentencepiece learns another tokenizer with another number of threads: taking the machine's cores
    would make every machine learn its own."""
    lines, _ = small_corpus
    models = {}
    for threads in (1, 2, 4):
        train_tokenizer(lines, cfg(threads=threads), tmp_path / f"{threads}.model", tmp_path / f"{threads}.vocab")
        models[threads] = (tmp_path / f"{threads}.model").read_bytes()
    assert len(set(models.values())) > 1


def test_vocab_too_small_is_a_config_error_before_training(small_corpus, tmp_path):
    lines, _ = small_corpus
    with pytest.raises(ConfigError, match=r"'vocab_size' = 100 is too small for this corpus: it needs at least \d+"):
        train_tokenizer(lines, cfg(vocab_size=100), tmp_path / "t.model", tmp_path / "t.vocab")
    assert not (tmp_path / "t.model").exists()


def test_vocab_too_large_is_a_config_error(small_corpus, tmp_path):
    lines, _ = small_corpus
    with pytest.raises(ConfigError, match=r"'vocab_size' = 60000 is too large for this corpus"):
        train_tokenizer(lines[:200], cfg(vocab_size=60000), tmp_path / "t.model", tmp_path / "t.vocab")
    assert not (tmp_path / "t.model").exists()


def held_out_count(processor, text: str) -> HeldOutCount:
    return HeldOutCount.of(text, len(processor.encode(text)), vocabulary_characters(processor))


def test_held_out_metrics(small_corpus, tmp_path):
    lines, held_out = small_corpus
    processor = train_tokenizer(lines, cfg(), tmp_path / "t.model", tmp_path / "t.vocab")
    for language in ("en", "es"):
        m = held_out_count(processor, held_out[language]).metrics()
        assert m["characters"] == len(held_out[language])
        assert m["tokens"] == len(processor.encode(held_out[language]))
        assert 0.1 < m["tokens_per_character"] < 1.0
        assert 0.99 < m["character_coverage"] <= 1.0
    rare = held_out_count(processor, "☃☃☃☃ab").metrics()
    assert rare["character_coverage"] == pytest.approx(2 / 6)
    both = held_out_count(processor, "☃☃ab")
    both.add(held_out_count(processor, "cd☃☃"))
    assert both.metrics()["character_coverage"] == pytest.approx(4 / 8)
    assert both.tokens == len(processor.encode("☃☃ab")) + len(processor.encode("cd☃☃"))


def test_required_characters():
    assert required_characters(["aaaaaaaaab"], 0.9) == 1
    assert required_characters(["aaaaaaaaab"], 1.0) == 2


@settings(max_examples=200, deadline=None, database=None)
@given(lines=st.lists(st.text(alphabet=st.sampled_from(list("ab ñ日🙂")), max_size=3 * MAX_SENTENCE_BYTES), max_size=3))
def test_training_sentences_are_the_lines_cut_within_sentencepieces_limit(lines):
    parts = list(sentences(lines))
    assert all(len(part.encode("utf-8")) <= MAX_SENTENCE_BYTES for part in parts)
    assert "".join(parts) == "".join(lines)
    assert len(parts) >= len(lines)


def test_a_book_on_one_line_trains_the_tokenizer(small_corpus, tmp_path):
    """sentencepiece skips a sentence longer than its limit: a one-line book would leave nothing to learn from."""
    lines, _ = small_corpus
    one_line = " ".join(lines)
    processor = train_tokenizer([one_line], cfg(), tmp_path / "tok.model", tmp_path / "tok.vocab")
    assert len(processor.encode(one_line[:5000])) < 2500  # whole words learned, not single characters


def pieces(text: str, limit: int) -> list[str]:
    """``text`` in line-aligned pieces of about ``limit`` characters, as the tokenize stage reads a book's chunks."""
    lines = text.splitlines(keepends=True)
    return ["".join(lines[i:i + max(1, limit // 10)]) for i in range(0, len(lines), max(1, limit // 10))]


def test_the_tokenizer_learns_from_every_line_when_the_sample_bound_holds_them():
    text = "".join(f"línea {i}\n" if i % 7 else "   \n" for i in range(500))
    assert sample_sentences(pieces(text, 100), len(text.encode()), 1e6, seed=1) == \
        [line for line in text.split("\n") if line.strip()]


def test_beyond_the_bound_it_learns_from_a_seeded_sample_whatever_the_chunks():
    text = "".join(f"{i} {'palabra ' * (i % 13)}\n" for i in range(20_000))
    data = text.encode()

    def sample(limit: int, seed: int = 5) -> list[str]:
        return sample_sentences(pieces(text, limit), len(data), len(data) / 10, seed)

    drawn = sample(4096)
    assert drawn == sample(777) == sample(len(data))  # one draw per line, in corpus order
    assert drawn != sample(4096, seed=6)
    assert 0.08 * len(data) < sum(len(line.encode()) + 1 for line in drawn) < 0.12 * len(data)
    numbers = [int(line.split()[0]) for line in drawn]
    assert numbers == sorted(set(numbers))  # whole lines of the corpus, in its order
