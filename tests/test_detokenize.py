"""Text as it is generated: byte-fallback pieces held until they complete a character, stop sequences cut exactly."""

import contextlib
import signal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from src.data.tokenizer import load_tokenizer
from src.lib.runtime.detokenize import Detokenizer, StopMatcher, TextStream, byte_values, prefix_function

MIXED = "En un lugar de la Mancha,\n\n  It was 日本 ok — ñ ‽ «fin» 🙂"


@pytest.fixture(scope="module")
def tokenizer(tiny_pipeline):
    return load_tokenizer(tiny_pipeline / "data/bilingual_1k.model")


def test_pushing_ids_one_at_a_time_gives_the_decoded_text(tokenizer):
    ids = tokenizer.encode(MIXED)
    assert any(tokenizer.is_byte(i) for i in ids), "the test needs characters outside the vocabulary"
    stream = Detokenizer(tokenizer)
    parts = [stream.push(i) for i in ids]
    assert "".join(parts) == tokenizer.decode(ids) == MIXED


def test_bytes_are_held_until_they_make_a_character(tokenizer):
    ids = tokenizer.encode("日")
    assert len(ids) == 3 and all(tokenizer.is_byte(i) for i in ids)
    stream = Detokenizer(tokenizer)
    assert [stream.push(i) for i in ids] == ["", "", "日"]


def test_bytes_that_never_make_a_character_are_dropped_never_shown_as_replacement_characters(tokenizer):
    first_byte = tokenizer.encode("日")[0]
    stream = Detokenizer(tokenizer)
    assert stream.push(first_byte) == ""
    assert stream.push(tokenizer.encode("a")[0]) == "a"
    stream = TextStream(tokenizer, iter([first_byte, *tokenizer.encode("ok"), first_byte]))
    assert "".join(stream) == stream.text == "ok"
    assert "\ufffd" in tokenizer.decode([first_byte])  # what sentencepiece shows for it


def test_byte_values_name_the_byte_of_each_byte_piece(tokenizer):
    values = byte_values(tokenizer)
    assert len(values) == tokenizer.get_piece_size() and sorted(values[values >= 0].tolist()) == list(range(256))
    assert [int(values[i]) for i in tokenizer.encode("日")] == list("日".encode())
    assert values[tokenizer.encode("the")[0]] == -1


def stream_of(tokenizer, text, stop):
    stream = TextStream(tokenizer, iter(tokenizer.encode(text)), stop)
    return list(stream), stream


@pytest.mark.parametrize("stop, expected", [
    ("Mancha", "En un lugar de la "),
    ("a,\n\n  It", "En un lugar de la Manch"),  # spans several pieces, newlines included
    ("日本", "En un lugar de la Mancha,\n\n  It was "),  # spans byte pieces
    ("本 o", "En un lugar de la Mancha,\n\n  It was 日"),  # starts in the middle of a character's bytes
    ("🙂", "En un lugar de la Mancha,\n\n  It was 日本 ok — ñ ‽ «fin» "),
    ("not in the text", MIXED),
])
def test_the_text_ends_exactly_before_the_stop_sequence(tokenizer, stop, expected):
    pieces, stream = stream_of(tokenizer, MIXED, [stop])
    assert "".join(pieces) == stream.text == expected
    assert stream.stopped == (stop in MIXED)


def test_the_first_stop_sequence_completed_wins(tokenizer):
    # "la Mancha" starts first but completes after "lugar" does.
    pieces, stream = stream_of(tokenizer, MIXED, ["la Mancha", "lugar", "zzz"])
    assert "".join(pieces) == "En un " and stream.stopped
    # The ids that completed the stop sequence were read, no further.
    assert tokenizer.decode(stream.tokens).startswith("En un lugar") and "Mancha" not in tokenizer.decode(stream.tokens)


def test_text_that_may_start_a_stop_sequence_is_held_back_until_it_does_not(tokenizer):
    text, stops = "It is a truth universally acknowledged", ["truth told", "ack!"]
    ids, states = tokenizer.encode(text), []

    def one_at_a_time():
        for count, token in enumerate(ids, 1):
            yield token
            states.append((tokenizer.decode(ids[:count]), stream.text))  # after the stream took ``token``

    stream = TextStream(tokenizer, one_at_a_time(), stops)
    assert "".join(stream) == stream.text == text and not stream.stopped
    for read, shown in states:
        assert read.startswith(shown) and any(stop.startswith(read[len(shown):]) for stop in stops)
    assert ("It is a truth", "It is a ") in states  # "truth" held back, then released with " un"
    assert ("It is a truth universally ack", "It is a truth universally ") in states


def test_finish_releases_what_was_held_back(tokenizer):
    ids = tokenizer.encode("It is a truth universally")

    def interrupted_after_truth():
        for count, token in enumerate(ids, 1):
            yield token
            if tokenizer.decode(ids[:count]).endswith("truth"):
                raise KeyboardInterrupt

    stream, shown = TextStream(tokenizer, interrupted_after_truth(), ["truth told"]), ""
    with pytest.raises(KeyboardInterrupt):
        for piece in stream:
            shown += piece
    assert shown == "It is a "  # "truth" is held back: it may be the start of "truth told"
    assert stream.finish() == "truth" and stream.text == "It is a truth"
    assert stream.finish() == "" and list(stream) == []


def test_an_empty_stop_sequence_is_refused(tokenizer):
    with pytest.raises(ValueError, match="must not be empty"):
        TextStream(tokenizer, iter([]), ["\n", ""])


@settings(max_examples=200, deadline=None, database=None)
@given(text=st.text(alphabet=st.sampled_from(list("ab ñ日\n🙂")), max_size=40),
       stops=st.lists(st.text(alphabet=st.sampled_from(list("ab ñ日\n🙂")), min_size=1, max_size=4), max_size=3))
def test_streamed_pieces_join_to_the_text_cut_before_the_earliest_completed_stop(tokenizer, text, stops):
    pieces, stream = stream_of(tokenizer, text, stops)
    found = [(text.find(stop) + len(stop), text.find(stop)) for stop in stops if stop in text]
    expected = text[:min(found)[1]] if found else text  # the first to end, the longest of those
    assert "".join(pieces) == stream.text == expected
    assert all(pieces) and stream.stopped == bool(found)


@contextlib.contextmanager
def at_most(seconds: int):
    """Fail the block (TimeoutError) if it runs longer than ``seconds``: work that must not grow with the square of
    its input, on an input where the square is hours."""
    def expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_a_stop_sequence_of_a_million_characters_costs_time_in_proportion_to_its_length(tokenizer):
    """The text nearly completes each stop over and over: matching by prefixes would take hours."""
    text = ("a" * 50 + " ") * 200
    stops = ["x" * 10**6, "a" * 10**6, ("a" * 49 + " ") * 20_000]
    with at_most(60):
        pieces, stream = stream_of(tokenizer, text, stops)
    assert "".join(pieces) == stream.text == text and not stream.stopped


@settings(max_examples=300, deadline=None, database=None)
@given(text=st.text(alphabet="ab", max_size=60), stops=st.lists(st.text(alphabet="ab", min_size=1, max_size=6),
                                                              min_size=1, max_size=3))
def test_the_stop_matcher_follows_every_stop_as_naive_matching_does(text, stops):
    matcher = StopMatcher(stops)
    for end in range(1, len(text) + 1):
        read = text[:end]
        completed = matcher.feed(text[end - 1])
        ending = [stop for stop in stops if read.endswith(stop)]
        assert completed == max(ending, key=len, default=None)
        assert matcher.matched == [max(n for n in range(len(stop) + 1) if read.endswith(stop[:n])) for stop in stops]


@given(st.text(alphabet="abc", max_size=40))
def test_the_prefix_function_is_the_longest_proper_border_of_each_prefix(text):
    assert prefix_function(text) == [max(n for n in range(i + 1) if text[:i + 1].endswith(text[:n]))
                                     for i in range(len(text))]
