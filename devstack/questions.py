"""Question-service stand-in: ``POST /models/generate`` answers like a small LLM (not product code).

The output is derived from the prompt only (deterministic for a given prompt and temperature): a preamble
line, a numbered list of questions built from the prompt's salient sentences and terms, and a closing line.
Like a real model it stops after roughly ``max_tokens * 4`` characters, even mid-line.
"""

from __future__ import annotations

import random
import re
import zlib
from collections import Counter
from typing import Annotated

from pydantic import BaseModel, Field, StringConstraints
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from devstack.settings import DevstackSettings
from devstack.text import sentences, stem, words
from devstack.web import read_model

DEFAULT_MODEL = "devstack-llm"
DEFAULT_COUNT = 5
MAX_COUNT = 50
CHARS_PER_TOKEN = 4

_NUMBER_WORDS = {
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "fifteen": 15,
    "twenty": 20,
}
_COUNT = re.compile(
    r"\b(?:generate|create|write|produce|give(?:\s+me)?|list)\s+(?:exactly\s+|up\s+to\s+)?"
    r"(\d{1,3}|" + "|".join(_NUMBER_WORDS) + r")\s+(?:[\w-]+\s+){0,4}?questions?\b",
    re.IGNORECASE,
)
_CONTEXT_MARKER = re.compile(
    r"^\s*(?:context|text|material|content|document|passage|source)s?\s*:\s*", re.IGNORECASE | re.MULTILINE
)
_END_MARKER = re.compile(
    r"^\s*(?:questions?|instructions?|format|output|answer|task|requirements?)\s*:", re.IGNORECASE | re.MULTILINE
)
_INSTRUCTION = re.compile(
    r"\b(?:generate|you are|questions?|format|respond|return|output|numbered|instructions?)\b", re.IGNORECASE
)
_DEFINITION = re.compile(
    r"^(?P<subject>[\w'’ -]{2,60}?)\s+(?P<verb>is|are|refers to|means)\s+(?P<rest>\S.*)$", re.IGNORECASE
)
_ARTICLE = re.compile(r"^(?:The|A|An)\b")
_PRONOUN_START = re.compile(r"^(?:it|this|that|these|those|they|he|she|we|its|their)\b", re.IGNORECASE)
_TEMPLATES = (
    "Explain the role of {term} in {topic}.",
    "Why is {term} important?",
    "How does {term} relate to {other}?",
    "Describe {term} and give an example.",
    "What does the text say about {term}?",
    "What are the main characteristics of {term}?",
)
_FALLBACK = (
    "What is the main idea of the material?",
    "Which key terms does the material introduce?",
    "Summarise the most important points in your own words.",
    "What example would best illustrate the main concept?",
    "What questions remain open after reading the material?",
)


class GenerateRequest(BaseModel):
    prompt: Annotated[str, StringConstraints(min_length=1, max_length=1_000_000)]
    model: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = None
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    max_tokens: int = Field(default=1024, ge=1, le=65_536)


def requested_count(prompt: str) -> int:
    match = _COUNT.search(prompt)
    if match is None:
        return DEFAULT_COUNT
    raw = match.group(1).lower()
    count = int(raw) if raw.isdigit() else _NUMBER_WORDS[raw]
    return max(1, min(MAX_COUNT, count))


def extract_context(prompt: str) -> str:
    """The material part of a prompt: after a ``Context:``-style marker, else the non-instruction lines."""
    markers = list(_CONTEXT_MARKER.finditer(prompt))
    if markers:
        tail = prompt[markers[-1].end() :]
        end = _END_MARKER.search(tail)
        return tail[: end.start()] if end else tail
    return "\n".join(line for line in prompt.splitlines() if not _INSTRUCTION.search(line))


def _clean(fragment: str) -> str:
    return " ".join(fragment.strip(" \t\n\"'“”‘’").split()).rstrip(".,;:!?")


def build_questions(prompt: str, count: int, temperature: float) -> list[str]:
    context = extract_context(prompt)
    rng = random.Random(zlib.crc32(prompt.encode()) ^ int(temperature * 1000))
    surface: dict[str, str] = {}
    frequency: Counter[str] = Counter()
    for word in words(context):
        key = stem(word)
        surface.setdefault(key, word)
        frequency[key] += 1
    ranked_terms = [surface[key] for key, _ in frequency.most_common() if len(key) > 2]
    topic = ranked_terms[0] if ranked_terms else "the material"

    def salience(sentence: str) -> float:
        keys = {stem(w) for w in words(sentence)}
        return sum(frequency[k] for k in keys) / (1 + len(keys)) ** 0.5 if len(keys) >= 2 else 0.0

    candidates = [s for s in sentences(context) if 15 <= len(s) <= 400 and not s.endswith("?")]
    ordered = sorted(candidates, key=lambda s: -salience(s))
    if temperature > 0 and len(ordered) > 1:
        window = max(1, int(len(ordered) * min(1.0, temperature / 2)))
        head = ordered[: window + 1]
        rng.shuffle(head)
        ordered = head + ordered[window + 1 :]

    questions: list[str] = []
    seen: set[str] = set()

    def add(question: str) -> None:
        if question.lower() not in seen and len(questions) < count:
            seen.add(question.lower())
            questions.append(question)

    for sentence in ordered:
        match = _DEFINITION.match(sentence)
        if match and len(match.group("subject").split()) <= 6:
            verb = "are" if match.group("verb").lower() == "are" else "is"
            subject = _ARTICLE.sub(lambda m: m.group(0).lower(), _clean(match.group("subject")))
            add(f"What {verb} {subject}?")
        elif not _PRONOUN_START.match(sentence):
            add(f'Explain what the material means by "{_clean(sentence)[:160]}".')
        if len(questions) >= count:
            return questions
    template_index = rng.randrange(len(_TEMPLATES))
    for index, term in enumerate(ranked_terms):
        other = ranked_terms[(index + 1) % len(ranked_terms)]
        template = _TEMPLATES[(template_index + index) % len(_TEMPLATES)]
        add(template.format(term=term, topic=topic if topic != term else "the material", other=other))
        if len(questions) >= count:
            return questions
    for question in _FALLBACK:
        add(question)
    number = 1
    while len(questions) < count:
        add(f"Question {number}: what else does the material teach about {topic}?")
        number += 1
    return questions


def render(questions: list[str]) -> str:
    lines = [f"Here are {len(questions)} questions based on the provided material:", ""]
    lines += [f"{number}. {question}" for number, question in enumerate(questions, start=1)]
    lines += ["", "These questions cover the key concepts of the material."]
    return "\n".join(lines)


class QuestionApi:
    def __init__(self, settings: DevstackSettings) -> None:
        self.settings = settings

    async def generate(self, request: Request) -> Response:
        body = await read_model(request, GenerateRequest, self.settings.max_body_bytes)
        questions = build_questions(body.prompt, requested_count(body.prompt), body.temperature)
        text = render(questions)[: body.max_tokens * CHARS_PER_TOKEN]
        return JSONResponse({"response": text, "model_used": body.model or DEFAULT_MODEL})
