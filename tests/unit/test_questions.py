"""Question parsing on messy LLM answers, and the bounded context the prompt is built from."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.rag.questions import MAX_LEN, MIN_LEN, build_context, build_prompt, parse_questions


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "1. What is photosynthesis?\n2. Where does the Calvin cycle run?\n3. Why is chlorophyll green?",
            ["What is photosynthesis?", "Where does the Calvin cycle run?", "Why is chlorophyll green?"],
            id="numbered-dot",
        ),
        pytest.param(
            "1) What is photosynthesis?\n2) Where does the Calvin cycle run?",
            ["What is photosynthesis?", "Where does the Calvin cycle run?"],
            id="numbered-paren",
        ),
        pytest.param(
            "(1) What is photosynthesis?\n(2) Where does the Calvin cycle run?",
            ["What is photosynthesis?", "Where does the Calvin cycle run?"],
            id="numbered-both-parens",
        ),
        pytest.param(
            "- What is photosynthesis?\n* Where does the Calvin cycle run?\n• Why is chlorophyll green?",
            ["What is photosynthesis?", "Where does the Calvin cycle run?", "Why is chlorophyll green?"],
            id="bullets",
        ),
        pytest.param(
            "Here are 3 questions based on the provided material:\n\n"
            "1. What is photosynthesis?\n\n"
            "2. Where does the Calvin cycle run?\n\n\n"
            "3. Why is chlorophyll green?\n\n"
            "These questions cover the key concepts of the material. Hope this helps!",
            ["What is photosynthesis?", "Where does the Calvin cycle run?", "Why is chlorophyll green?"],
            id="preamble-blank-lines-trailing-chatter",
        ),
        pytest.param(
            "Sure! Here you go:\nQuestions:\n1. What is photosynthesis?\n2. Why is chlorophyll green?\nLet me know!",
            ["What is photosynthesis?", "Why is chlorophyll green?"],
            id="sure-preamble-heading",
        ),
        pytest.param(
            '### Questions\n1. **What is photosynthesis?**\n2. `Why is chlorophyll green?`\n3. "What is ATP for?"',
            ["What is photosynthesis?", "Why is chlorophyll green?", "What is ATP for?"],
            id="markdown-heading-and-wrappers",
        ),
        pytest.param(
            "Question 1: What is photosynthesis?\nQuestion 2: Why is chlorophyll green?\nQ3. What is ATP for?",
            ["What is photosynthesis?", "Why is chlorophyll green?", "What is ATP for?"],
            id="question-n-prefix",
        ),
        pytest.param(
            "What is photosynthesis?\nWhy is chlorophyll green?",
            ["What is photosynthesis?", "Why is chlorophyll green?"],
            id="plain-lines",
        ),
        pytest.param(
            '["What is photosynthesis?", "Why is chlorophyll green?"]',
            ["What is photosynthesis?", "Why is chlorophyll green?"],
            id="json-array",
        ),
        pytest.param(
            '[{"question": "What is photosynthesis?", "difficulty": "easy"}, {"question": "Why is it green?"},'
            ' {"answer": "no question here"}, 42, null]',
            ["What is photosynthesis?", "Why is it green?"],
            id="json-objects",
        ),
        pytest.param(
            'Sure, here is the JSON you asked for:\n```json\n{"questions": ["What is photosynthesis?",'
            ' "Why is chlorophyll green?"]}\n```\nAnything else?',
            ["What is photosynthesis?", "Why is chlorophyll green?"],
            id="json-fenced-with-chatter",
        ),
        pytest.param(
            "1. What is photosynthesis?\n2. what is photosynthesis\n3. WHAT IS PHOTOSYNTHESIS?\n4. Why is it green?",
            ["What is photosynthesis?", "Why is it green?"],
            id="duplicates",
        ),
        pytest.param(
            "1. What is a list like [1, 2, 3] used for?\n2. Why is chlorophyll green?",
            ["What is a list like [1, 2, 3] used for?", "Why is chlorophyll green?"],
            id="numbered-list-with-json-looking-brackets",
        ),
        pytest.param(
            '1. What does ["a", "b"] mean in Python?\n2. Why is chlorophyll green?\n3. What is ATP for?',
            ['What does ["a", "b"] mean in Python?', "Why is chlorophyll green?", "What is ATP for?"],
            id="numbered-list-quoting-a-string-array",
        ),
        pytest.param(
            'Questions: ["What is photosynthesis?", "Why is chlorophyll green?"] (see [1] for details)',
            ["What is photosynthesis?", "Why is chlorophyll green?"],
            id="json-array-followed-by-brackets",
        ),
        pytest.param("1. Why?\n2. ok\n3.\n-", [], id="too-short"),
        pytest.param("", [], id="empty"),
        pytest.param("Here are some questions:\n\n", [], id="only-preamble"),
    ],
)
def test_parse_messy_samples(text: str, expected: list[str]) -> None:
    assert parse_questions(text, 10) == expected


def test_more_than_count_is_cut_in_order() -> None:
    text = "\n".join(f"{n}. What is the meaning of item number {n}?" for n in range(1, 13))
    assert parse_questions(text, 3) == [f"What is the meaning of item number {n}?" for n in (1, 2, 3)]
    assert len(parse_questions(text, 20)) == 12


def test_count_applies_after_deduplication() -> None:
    text = "1. What is photosynthesis?\n2. What is photosynthesis?\n3. Why is it green?\n4. What is ATP for?"
    assert parse_questions(text, 2) == ["What is photosynthesis?", "Why is it green?"]


def test_json_array_more_than_count() -> None:
    text = json.dumps([f"What is question number {n}?" for n in range(30)])
    assert len(parse_questions(text, 20)) == 20


def test_overlong_line_is_dropped() -> None:
    text = "1. What " + "very " * 200 + "long?\n2. Why is chlorophyll green?"
    assert parse_questions(text, 5) == ["Why is chlorophyll green?"]


def test_deeply_nested_json_does_not_crash() -> None:
    # A hostile or broken downstream answer must not escape as an unhandled RecursionError (500).
    text = "[" * 100_000 + "]" * 100_000 + "\n1. What is photosynthesis?"
    assert parse_questions(text, 5) == ["What is photosynthesis?"]


def test_devstack_style_answer_truncated_mid_line() -> None:
    text = (
        "Here are 3 questions based on the provided material:\n\n1. What is photosynthesis?\n"
        "2. Why is chlorophyll green?\n3. Explain what the material means by"
    )
    found = parse_questions(text, 3)
    assert found[:2] == ["What is photosynthesis?", "Why is chlorophyll green?"]


_line = st.one_of(
    st.text(max_size=80),
    st.builds(lambda n, s: f"{n}. {s}", st.integers(0, 999), st.text(max_size=80)),
    st.builds(lambda n, s: f"{n}) {s}", st.integers(0, 999), st.text(max_size=80)),
    st.builds(lambda b, s: f"{b} {s}", st.sampled_from("-*•"), st.text(max_size=80)),
    st.sampled_from(["", "Here are the questions:", "Hope this helps!", "[", "]", '{"question": "x"}', "```"]),
)
_answers = st.one_of(
    st.lists(_line, max_size=30).map("\n".join),
    st.lists(
        st.one_of(st.text(max_size=60), st.fixed_dictionaries({"question": st.text(max_size=60)})), max_size=30
    ).map(json.dumps),
    st.text(max_size=400),
)


@settings(database=None, max_examples=300, deadline=None)
@given(text=_answers, count=st.integers(1, 20))
def test_parse_properties(text: str, count: int) -> None:
    found = parse_questions(text, count)
    assert len(found) <= count
    keys = [q.lower().rstrip("?.! ") for q in found]
    assert len(set(keys)) == len(keys)
    for question in found:
        assert isinstance(question, str)
        assert question.strip()
        assert question == question.strip()
        assert MIN_LEN <= len(question) <= MAX_LEN
        assert "\n" not in question


# -- build_context --------------------------------------------------------------------------------------------
def test_build_context_joins_in_order_and_skips_empty() -> None:
    chunks: list[dict[str, str | None]] = [
        {"chunk_text": "alpha"},
        {"chunk_text": "  "},
        {"chunk_text": None},
        {},
        {"chunk_text": "beta"},
    ]
    assert build_context(chunks, max_chars=100, max_chunks=10) == ("alpha\n\nbeta", 2)


def test_build_context_char_bound_truncates_last_piece() -> None:
    chunks = [{"chunk_text": "a" * 10}, {"chunk_text": "b" * 10}, {"chunk_text": "c" * 10}]
    context, used = build_context(chunks, max_chars=15, max_chunks=10)
    assert context == "a" * 10 + "\n\n" + "bbb"
    assert used == 2


def test_build_context_chunk_bound() -> None:
    chunks = [{"chunk_text": f"chunk {n}"} for n in range(10)]
    context, used = build_context(chunks, max_chars=10_000, max_chunks=3)
    assert used == 3
    assert context == "chunk 0\n\nchunk 1\n\nchunk 2"


def test_build_context_no_room() -> None:
    assert build_context([{"chunk_text": "abc"}], max_chars=0, max_chunks=5) == ("", 0)
    assert build_context([{"chunk_text": "abc"}], max_chars=5, max_chunks=0) == ("", 0)
    assert build_context([], max_chars=5, max_chunks=5) == ("", 0)


def test_build_context_accepts_a_generator() -> None:
    context, used = build_context(({"chunk_text": str(n)} for n in range(3)), max_chars=100, max_chunks=10)
    assert (context, used) == ("0\n\n1\n\n2", 3)


@settings(database=None, max_examples=300, deadline=None)
@given(
    texts=st.lists(st.one_of(st.none(), st.text(max_size=300)), max_size=40),
    max_chars=st.integers(0, 2000),
    max_chunks=st.integers(0, 50),
)
def test_build_context_bounds(texts: list[str | None], max_chars: int, max_chunks: int) -> None:
    context, used = build_context([{"chunk_text": t} for t in texts], max_chars=max_chars, max_chunks=max_chunks)
    assert len(context) <= max_chars
    assert 0 <= used <= min(max_chunks, len(texts))
    assert (used == 0) == (context == "")
    non_empty = [t.strip() for t in texts if t and t.strip()]
    if non_empty and max_chunks > 0 and max_chars > 0:
        assert context.startswith(non_empty[0][:max_chars])


def test_build_prompt_names_count_and_context() -> None:
    prompt = build_prompt("The Calvin cycle fixes carbon.", 4)
    assert "4 questions" in prompt
    assert "The Calvin cycle fixes carbon." in prompt
