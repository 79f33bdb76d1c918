"""Score documents with a trained educational-value fastText model (what `annotate` writes as `edu_score`).

A binary model (labels `__label__pos`/`__label__neg`) scores the probability of the positive class; a
per-rating model (labels `__label__0` ... `__label__5`) scores the expected rating sum(k * p(k)).
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

from pipeline.errors import UserError

POS, NEG = "__label__pos", "__label__neg"


_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})


def one_line(text: str | None) -> str:
    """What the model reads, in training and scoring alike: one line (fastText reads a document per line),
    lower case and plain quotes, so that typography (curly quotes, capitalized headings) is not a feature.
    Measured on the bundled labels: +0.005 ROC-AUC over raw text on the group split."""
    return " ".join((text or "").split()).lower().translate(_QUOTES)


def _local_copy(model_path: str) -> tuple[str, str | None]:
    """fastText loads only local files: copy a model on an object store (s3://, gs://) to a temporary file."""
    if "://" not in model_path:
        return model_path, None
    from pipeline.storage import resolve

    fs, path = resolve(model_path)
    fd, tmp = tempfile.mkstemp(suffix=os.path.splitext(path)[1])
    with os.fdopen(fd, "wb") as out, fs.open_input_stream(path) as f:
        out.write(f.read())
    return tmp, tmp


def load_fasttext(model_path: str):
    """Load a fastText model from a local path or URL, with a UserError naming the path if it can't be
    read."""
    import fasttext

    local, tmp = _local_copy(model_path)
    if not os.path.isfile(local):
        raise UserError(f"{model_path}: fastText model file not found")
    try:
        return fasttext.load_model(local)
    except ValueError as e:
        raise UserError(f"{model_path}: not a fastText model ({e})") from None
    finally:
        if tmp:
            os.remove(tmp)


class EduScorer:
    """Educational-value scores in batches. Not picklable (fastText): build one per Ray actor/task."""

    def __init__(self, model_path: str):
        self.model_path = model_path
        self.model = load_fasttext(model_path)
        labels = list(self.model.labels)
        if sorted(labels) == sorted([POS, NEG]):
            self.kind = "binary"
            self._values = None
        elif labels and all(lab.removeprefix("__label__").isdigit() for lab in labels):
            self.kind = "ratings"
            self._values = {lab: float(lab.removeprefix("__label__")) for lab in labels}
        else:
            raise UserError(
                f"{model_path}: labels {labels} are neither binary ({POS}, {NEG}) nor ratings (__label__0 "
                "...); "
                "train it with `phicurate classifier train`"
            )
        self._k = len(labels)

    def score(self, texts: list[str]) -> list[float]:
        """One score per text: P(positive) for a binary model, the expected rating for a per-rating model."""
        if not texts:
            return []
        # Always a list: fastText 0.9.3's single-string predict breaks on NumPy 2 (np.array(copy=False)).
        labels, probs = self.model.predict([one_line(t) for t in texts], k=self._k)
        out = []
        for labs, ps in zip(labels, probs):
            # fastText reports p + 1e-5 per label; renormalizing over all labels keeps scores within [0, 1].
            p = dict(zip(labs, np.asarray(ps, dtype=np.float64) / float(np.sum(ps))))
            if self.kind == "binary":
                out.append(float(p[POS]))
            else:
                out.append(float(sum(self._values[lab] * q for lab, q in p.items())))
        return out
