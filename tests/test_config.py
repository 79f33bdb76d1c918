"""Config errors name the file, the key path and what was expected; the CLI exits 2 without a traceback."""

import subprocess
import sys

import pytest
import yaml

from pipeline.config import load_config, parse_config
from pipeline.errors import UserError

GOOD_INPUT = {"path": "tests/data/demo/onestopenglish.jsonl.zst", "source": "web/ose"}


def _error(cfg: dict, tmp_path) -> str:
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(cfg))
    with pytest.raises(UserError) as e:
        load_config(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}:"), msg  # names the file
    return msg


@pytest.mark.parametrize(
    "cfg, expected",
    [
        # unknown key, with its path
        ({"ingest": {"inputs": [GOOD_INPUT], "max_doc_byte": 5}}, "ingest.max_doc_byte: unknown key"),
        # wrong type
        (
            {"ingest": {"inputs": [GOOD_INPUT], "max_doc_bytes": "big"}},
            "ingest.max_doc_bytes: Input should be a valid integer",
        ),
        # missing required section
        ({"run": {"name": "x"}}, "ingest: required key is missing"),
        # missing input file
        (
            {"ingest": {"inputs": [{"path": "no/such/file.jsonl", "source": "web/x"}]}},
            "ingest.inputs[0].path: no file or directory matches 'no/such/file.jsonl'",
        ),
        # impossible value
        (
            {"ingest": {"inputs": [GOOD_INPUT], "max_doc_bytes": 0}},
            "ingest.max_doc_bytes: Input should be greater than or equal to 1",
        ),
        # empty list where one input is needed
        ({"ingest": {"inputs": []}}, "ingest.inputs: List should have at least 1 item"),
        # bad enum value
        (
            {"ingest": {"inputs": [{**GOOD_INPUT, "format": "csv"}]}},
            "ingest.inputs[0].format: Input should be 'auto', 'warc', 'jsonl' or 'parquet'",
        ),
        # bad source name
        (
            {"ingest": {"inputs": [{**GOOD_INPUT, "source": "web crawl"}]}},
            "ingest.inputs[0].source: String should match pattern",
        ),
        # run.stages naming a stage without its section
        (
            {"run": {"stages": ["ingest", "mix"]}, "ingest": {"inputs": [GOOD_INPUT]}},
            "run.stages names 'mix' but the config has no 'mix' section",
        ),
        # a stage name that does not exist
        (
            {"run": {"stages": ["ingest", "clean"]}, "ingest": {"inputs": [GOOD_INPUT]}},
            "run.stages[1]: Input should be",
        ),
    ],
)
def test_config_errors_name_key_and_expectation(cfg, expected, tmp_path):
    assert expected in _error(cfg, tmp_path)


def test_not_yaml_and_not_a_mapping(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("ingest: [unclosed\n")
    with pytest.raises(UserError, match=r"broken.yaml: not valid YAML"):
        load_config(p)
    with pytest.raises(UserError, match=r"expected a mapping of sections"):
        parse_config(["a", "list"], "list.yaml")


def test_missing_config_file():
    with pytest.raises(UserError, match="nope.yaml: config file not found"):
        load_config("nope.yaml")


def test_shipped_configs_validate():
    demo = load_config("configs/demo.yaml")
    assert demo.run.output == "out/demo"
    assert demo.stages()[0] == "ingest"
    load_config("configs/phi3-mini.yaml")


def test_cli_user_error_exits_2_without_traceback(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({"ingest": {"inputs": [GOOD_INPUT], "oops": 1}}))
    r = subprocess.run([sys.executable, "-m", "pipeline", "validate", str(p)], capture_output=True, text=True)
    assert r.returncode == 2
    assert "ingest.oops: unknown key" in r.stderr
    assert "Traceback" not in r.stderr
    ok = subprocess.run(
        [sys.executable, "-m", "pipeline", "validate", "configs/demo.yaml"], capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    assert "valid" in ok.stdout
