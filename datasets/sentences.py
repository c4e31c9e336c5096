"""Offline English text for synthetic speech: no network, reproducible by seed.

Two sources, interleaved: plain sentences lifted from the prose that ships with
Python itself (``pydoc_data.topics``, the language reference), and a small
grammar of newsreel, radio-drama and announcement sentences with numbers,
dates and names, so voices read both long technical and short spoken phrasing.
"""

from __future__ import annotations

import functools
import random
import re

_SUBJECTS = ["the minister", "our correspondent", "the old captain", "a young woman",
             "the conductor", "the farmers of the valley", "the committee", "my brother",
             "the engineer", "a crowd of children", "the mayor", "the night watchman",
             "the choir", "the pilot", "the doctor", "the teacher", "her grandfather",
             "the stationmaster", "a stranger in a grey coat", "the fishermen"]
_VERBS = ["announced", "explained", "insisted", "remembered", "reported", "promised",
          "admitted", "suggested", "warned", "wrote", "whispered", "declared"]
_CLAUSES = ["the train would leave at {time}", "the harvest had been the best in {n} years",
            "nobody had seen the lighthouse keeper since {day}",
            "the bridge over the river was finally open", "the storm had passed in the night",
            "the concert would go on despite the rain", "the letter arrived on {day} morning",
            "prices at the market had risen by {n} per cent",
            "the new wing of the hospital had {n} beds",
            "the expedition reached the summit on the {ordinal} of {month}",
            "the telephone lines were down across the county",
            "the orchestra had rehearsed for {n} weeks", "the ship was expected at {time}",
            "the school would reopen in {month}", "the film would be shown twice on {day}"]
_OPENERS = ["Good evening.", "Ladies and gentlemen,", "Well,", "Listen to me.", "Of course,",
            "In the news tonight,", "Meanwhile,", "I must say,", "Believe it or not,", ""]
_QUESTIONS = ["Where were you on {day} night?", "Did you hear what {subject} said?",
              "How many of them came back?", "Is it true that {clause}?",
              "What time does the last bus leave?", "Why did nobody tell me?"]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December"]
_ORDINALS = ["first", "second", "third", "fourth", "fifth", "tenth", "twelfth", "twentieth"]
_DOC_SENTENCE = re.compile(r"[A-Z][A-Za-z ,;'\-]+[.!?]")


@functools.lru_cache(maxsize=1)
def doc_sentences() -> tuple[str, ...]:
    """Plain-prose sentences (6–22 words, letters only) from Python's bundled docs."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # a Python built without its docs
        return ()
    text = re.sub(r"\s+", " ", " ".join(topics.values()))
    sentences = re.split(r"(?<=[.!?])\s+", text)
    return tuple(s for s in sentences
                 if _DOC_SENTENCE.fullmatch(s) and 6 <= len(s.split()) <= 22)


def _fill(template: str, rng: random.Random) -> str:
    return template.format(
        time=f"{rng.randint(1, 12)} {rng.choice(['o clock', 'fifteen', 'thirty', 'forty five'])}",
        n=rng.choice([2, 3, 5, 7, 12, 20, 40, 75, 100, 250]), day=rng.choice(_DAYS),
        month=rng.choice(_MONTHS), ordinal=rng.choice(_ORDINALS),
        subject=rng.choice(_SUBJECTS),
        clause=_fill(rng.choice(_CLAUSES), rng) if "{clause}" in template else "")


def grammar_sentence(rng: random.Random) -> str:
    if rng.random() < 0.2:
        return _fill(rng.choice(_QUESTIONS), rng)
    opener = rng.choice(_OPENERS)
    subject = rng.choice(_SUBJECTS)
    body = f"{subject} {rng.choice(_VERBS)} that {_fill(rng.choice(_CLAUSES), rng)}."
    body = body[0].upper() + body[1:] if not opener or opener.endswith(".") else body
    return f"{opener} {body}".strip()


def sentences(seed: int, words: int) -> str:
    """About ``words`` words of text, the same for the same seed."""
    rng = random.Random(seed)
    docs = doc_sentences()
    out: list[str] = []
    count = 0
    while count < words:
        sentence = rng.choice(docs) if docs and rng.random() < 0.4 else grammar_sentence(rng)
        out.append(sentence)
        count += len(sentence.split())
    return " ".join(out)
