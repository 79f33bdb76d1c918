"""Outside files (inputs, models, benchmarks, tokenizers) are fingerprinted one way, local or on object
storage."""

from __future__ import annotations

import subprocess
import sys
import time

import pyarrow.fs as pafs

from pipeline import storage
from pipeline.config import load_config
from pipeline.fingerprint import outside_files
from pipeline.runner import run_pipeline

INPUT = {"path": "tests/data/demo/onestopenglish.jsonl.zst", "source": "web/ose"}


def _upload(uri: str, data: bytes) -> None:
    fs, path = storage.resolve(uri)
    with fs.open_output_stream(path) as f:
        f.write(data)


_TRAIN = """
import random, sys
import fasttext
rng = random.Random(0)
words = {"pos": "lesson explains method step theorem proof example exercise chapter".split(),
         "neg": "buy cheap deals click here offer casino win free".split()}
path, seed = sys.argv[1], int(sys.argv[2])
with open(path + ".txt", "w") as f:
    for lab in ("pos", "neg") * 100:
        f.write(f"__label__{lab} {' '.join(rng.choices(words[lab], k=12))}\\n")
fasttext.train_supervised(path + ".txt", epoch=10, lr=0.1, dim=16, wordNgrams=2, bucket=10_000, minCount=1,
                          verbose=0, thread=1, seed=seed).save_model(path)
"""


def _train_edu_model(path, seed: int) -> bytes:
    """A small real fastText classifier; two seeds give two different files of the same size. Trained in a
    fresh process: fastText's training sometimes diverged (NaN) inside a process that also runs Ray."""
    subprocess.run([sys.executable, "-c", _TRAIN, str(path), str(seed)], check=True)
    return path.read_bytes()


def test_local_file_directory_and_name(tmp_path):
    f = tmp_path / "model.bin"
    f.write_bytes(b"one")
    d = tmp_path / "tok"
    d.mkdir()
    (d / "tokenizer.json").write_text("{}")
    before = outside_files([str(f), str(d), "microsoft/Phi-3-mini-4k-instruct", None])
    assert outside_files([str(f), str(d), "microsoft/Phi-3-mini-4k-instruct", None]) == before
    (d / "tokenizer.json").write_text('{"changed": 1}')
    assert outside_files([str(f), str(d), "microsoft/Phi-3-mini-4k-instruct"]) != before


def test_object_store_object_replaced_changes_fingerprint(s3_bucket):
    uri = f"{s3_bucket}/models/edu.bin"
    _upload(uri, b"first model")
    before = outside_files([uri])
    assert outside_files([uri]) == before
    time.sleep(1.1)  # S3's LastModified has one-second resolution
    _upload(uri, b"second model")  # same size: only the modification time tells
    assert outside_files([uri]) != before
    fs, path = storage.resolve(uri)
    assert fs.get_file_info(path).type == pafs.FileType.File


def test_replacing_a_model_on_object_storage_reruns_annotate(ray_local, write_config, s3_bucket, tmp_path):
    """The cluster recipe keeps annotate.edu_model on S3: retraining it in place must rerun annotate."""
    model = f"{s3_bucket}/models/edu.ftz"
    _upload(model, _train_edu_model(tmp_path / "edu1.bin", seed=1))
    path = write_config({"ingest": {"inputs": [INPUT]}, "annotate": {"edu_model": model, "workers": 1}})
    first = {r["stage"]: r for r in run_pipeline(load_config(path), log=lambda _: None)}
    assert not first["annotate"].get("skipped")
    again = {r["stage"]: r for r in run_pipeline(load_config(path), log=lambda _: None)}
    assert again["annotate"].get("skipped") and again["ingest"].get("skipped")

    time.sleep(1.1)
    _upload(model, _train_edu_model(tmp_path / "edu2.bin", seed=2))
    third = {r["stage"]: r for r in run_pipeline(load_config(path), log=lambda _: None)}
    assert third["ingest"].get("skipped")
    assert not third["annotate"].get("skipped"), "a replaced model on object storage must rerun annotate"
