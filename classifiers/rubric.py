"""The teacher's educational-value rubric: an additive 0-5 point prompt, and a strict parser of its answer.

Where it comes from: FineWeb-Edu's annotation prompt (Penedo et al. 2024, "The FineWeb Datasets",
appendix F.1; Llama-3-70B-Instruct rated 450k pages with it), itself an additive 5-point scheme after Yuan
et al. 2024 ("Self-Rewarding Language Models"), and in the spirit of phi-1 ("Textbooks Are All You Need",
Gunasekar et al. 2023), where GPT-4 judged the educational value of web code for a student learning to
program. The wording here is ours; the structure (one point per criterion met, a short justification,
then a fixed final line) is theirs. Change PROMPT_VERSION whenever the wording changes: labels carry it.
"""

from __future__ import annotations

import re

PROMPT_VERSION = "edu-additive-v1"

RUBRIC = """Below is an extract from a web page. Judge how useful it would be for teaching, from primary school \
to the first years of university, with the additive 5-point system below. Start from 0 and add a point for \
each criterion the extract meets:

- Add 1 point if it gives some basic information on an educational topic, even if mixed with unrelated or \
promotional material such as adverts, navigation or comments.
- Add another point if it addresses elements that matter for learning but does not follow educational \
standards: educational and non-educational content mixed, a superficial overview, or a disorganized, \
incoherent presentation.
- Award a third point if it is suitable for educational use and introduces key concepts of a school or \
university curriculum; it is coherent though perhaps incomplete or with some extraneous content, like the \
introduction of a textbook chapter or a basic tutorial.
- Grant a fourth point if it is highly relevant and useful for learning at that level, in a clear and \
consistent style, like a textbook chapter or a tutorial with substantial content, possibly with exercises and \
solutions, and little irrelevant material.
- Give a fifth point if its educational value is outstanding: ideal for teaching, with detailed reasoning \
that is easy to follow and thorough insight into its subject, and nothing non-educational.

The extract:
<extract>
{text}
</extract>

After reading the extract:
- Justify your total score in at most 100 words.
- End with one line of the form "Educational score: <points>", where <points> is a whole number from 0 to 5."""

# The final line the rubric asks for; markdown emphasis and a trailing "/5" or "points" are tolerated.
_SCORE_LINE = re.compile(
    r"educational\s+score\s*[:=]?\s*[*_`]*\s*(\d+(?:\.\d+)?)\s*(?:/\s*5|points?)?", re.IGNORECASE
)
_BARE = re.compile(r"^\s*[*_`]*(\d)[*_`]*\s*$")  # a reply that is nothing but the number


def build_prompt(text: str, max_chars: int = 4000) -> str:
    """The rubric around a document, cut at a word boundary after `max_chars` characters (an extract)."""
    if len(text) > max_chars:
        cut = text.rfind(" ", 0, max_chars)
        text = text[: cut if cut > max_chars // 2 else max_chars] + " ..."
    return RUBRIC.format(text=text)


def parse_score(reply: str | None) -> tuple[int | None, str | None]:
    """(score, None) for a reply that states one 0-5 score, else (None, why): nothing is guessed.

    A reply with no "Educational score: N", with conflicting ones, or with one outside 0-5 is unparseable;
    a reply that is only a digit counts as that score.
    """
    if reply is None:
        return None, "no reply"
    if not reply.strip():
        return None, "empty reply"
    found = _SCORE_LINE.findall(reply)
    if not found:
        bare = _BARE.match(reply)
        if bare:
            found = [bare.group(1)]
        else:
            return None, "no 'Educational score: N' line"
    if len({float(f) for f in found}) > 1:
        return None, f"conflicting scores {', '.join(found)}"
    value = float(found[-1])
    if value != int(value) or not 0 <= value <= 5:
        return None, f"score {found[-1]} is not a whole number from 0 to 5"
    return int(value), None
