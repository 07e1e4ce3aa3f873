"""Data loading: JSONL/CSV/Parquet files and URLs to dspy.Examples with a field mapping.

The hub path (datasets.load_dataset) needs network access and is not exercised here.
"""

from __future__ import annotations

import csv
import functools
import http.server
import json
import threading
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from grpo_trainer.contract.config import DataSpec
from grpo_trainer.dspy.data import PUPA_FIELDS, DataError, load_examples
from grpo_trainer.dspy.registry import data_defaults
from grpo_trainer.embedded.bundled import PII_DELEGATION

PUPA_ROWS = [
    {
        "conversation_hash": f"h{i}",
        "user_query": f"My name is Person {i}, please draft a note to my landlord.",
        "target_response": f"Here is a polite note number {i}.",
        "pii_units": f"Person {i}||landlord",
        "redacted_query": "My name is [NAME], please draft a note.",
    }
    for i in range(10)
]


def write(path: Path, rows: list[dict[str, Any]]) -> Path:
    if path.suffix in (".jsonl", ".json"):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif path.suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def papillon_examples(spec: DataSpec, **kw: Any) -> list[Any]:
    defaults = data_defaults("papillon")
    return load_examples(spec, default_fields=defaults.fields, default_inputs=defaults.inputs, **kw)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_pupa_columns_map_to_papillon_fields_in_every_format(tmp_path: Path, suffix: str) -> None:
    path = write(tmp_path / f"pupa{suffix}", PUPA_ROWS)
    examples = papillon_examples(DataSpec(source="file", path=str(path)))
    assert len(examples) == 10
    first = examples[0]
    assert set(first.keys()) == {"user_query", "target_response", "pii_str"}
    assert first.pii_str == "Person 0||landlord"
    assert set(first.inputs().keys()) == {"user_query"}
    assert set(first.labels().keys()) == {"target_response", "pii_str"}


def test_split_slices_and_limit_select_rows_as_the_tutorial_splits_pupa(tmp_path: Path) -> None:
    path = write(tmp_path / "pupa.jsonl", PUPA_ROWS)
    train = papillon_examples(DataSpec(source="file", path=str(path), split="train[:4]"))
    dev = papillon_examples(DataSpec(source="file", path=str(path), split="train[4:8]"))
    rest = papillon_examples(DataSpec(source="file", path=str(path), split="train[80%:]"))
    assert [e.pii_str.split("||")[0] for e in train] == [f"Person {i}" for i in range(4)]
    assert [e.pii_str.split("||")[0] for e in dev] == [f"Person {i}" for i in range(4, 8)]
    assert len(rest) == 2
    assert len(papillon_examples(DataSpec(source="file", path=str(path), split="train[2:]", limit=3))) == 3


def test_missing_column_error_names_it_and_lists_the_available_ones(tmp_path: Path) -> None:
    rows = [{k: v for k, v in r.items() if k != "pii_units"} for r in PUPA_ROWS]
    path = write(tmp_path / "no_pii.csv", rows)
    with pytest.raises(DataError) as info:
        papillon_examples(DataSpec(source="file", path=str(path)))
    message = str(info.value)
    assert "'pii_units' (for field 'pii_str')" in message
    assert "available columns: conversation_hash, user_query, target_response, redacted_query" in message


def test_field_mapping_renames_columns_and_overrides_the_default(tmp_path: Path) -> None:
    rows = [{"question": "Q?", "gold": "A.", "private": "Ann||Bob||Ann"}]
    path = write(tmp_path / "mine.jsonl", rows)
    spec = DataSpec(
        source="file",
        path=str(path),
        fields={"user_query": "question", "target_response": "gold", "pii_str": "private"},
    )
    (example,) = papillon_examples(spec)
    assert (example.user_query, example.target_response, example.pii_str) == ("Q?", "A.", "Ann||Bob||Ann")


def test_custom_program_takes_columns_as_fields_and_inputs_from_its_forward(tmp_path: Path) -> None:
    import dspy

    class QA(dspy.Module):
        def __init__(self) -> None:
            super().__init__()
            self.answer = dspy.Predict("question -> answer")

        def forward(self, question: str) -> dspy.Prediction:
            return self.answer(question=question)

    path = write(tmp_path / "qa.jsonl", [{"question": "2+2?", "answer": "4"}])
    defaults = data_defaults("my.module:QA", QA())
    (example,) = load_examples(
        DataSpec(source="file", path=str(path)), default_fields=defaults.fields, default_inputs=defaults.inputs
    )
    assert example.inputs().toDict() == {"question": "2+2?"}
    assert example.labels().toDict() == {"answer": "4"}


def test_input_fields_must_be_mapped_fields(tmp_path: Path) -> None:
    path = write(tmp_path / "pupa.jsonl", PUPA_ROWS)
    with pytest.raises(DataError, match="input field.*question"):
        papillon_examples(DataSpec(source="file", path=str(path), input_fields=["question"]))


def test_bad_files_fail_with_the_place_of_the_problem(tmp_path: Path) -> None:
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"user_query": "a"}\nnot json\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"broken\.jsonl:2: not valid JSON"):
        papillon_examples(DataSpec(source="file", path=str(broken)))
    with pytest.raises(DataError, match="does not exist"):
        papillon_examples(DataSpec(source="file", path=str(tmp_path / "absent.jsonl")))
    odd = write(tmp_path / "data.jsonl", PUPA_ROWS).rename(tmp_path / "data.txt")
    with pytest.raises(DataError, match="set format"):
        papillon_examples(DataSpec(source="file", path=str(odd)))
    assert len(papillon_examples(DataSpec(source="file", path=str(odd), format="jsonl"))) == 10


def test_bundled_pii_delegation_set_loads_with_the_papillon_defaults() -> None:
    train = papillon_examples(DataSpec(source="file", path=str(PII_DELEGATION / "train.jsonl")))
    assert len(train) >= 50
    assert all(e.pii_str and e.user_query and e.target_response for e in train)


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[str, Path, list[str]]]:
    """A local HTTP server (127.0.0.1) over a directory; yields (base URL, directory, request log)."""
    root = tmp_path / "www"
    root.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root, requests
    finally:
        server.shutdown()
        server.server_close()


def test_url_is_downloaded_once_into_the_cache(http_dir: tuple[str, Path, list[str]], tmp_path: Path) -> None:
    base, root, requests = http_dir
    write(root / "pupa.parquet", PUPA_ROWS)
    spec = DataSpec(source="url", url=f"{base}/pupa.parquet", split="train[:5]")
    cache = tmp_path / "cache"
    assert len(papillon_examples(spec, cache_dir=cache)) == 5
    (root / "pupa.parquet").unlink()  # a second load must not need the server
    assert len(papillon_examples(spec, cache_dir=cache)) == 5
    assert requests == ["/pupa.parquet"]
    assert [p.name for p in cache.iterdir() if not p.name.startswith(".")][0].endswith("-pupa.parquet")


def test_url_that_fails_reports_the_status(http_dir: tuple[str, Path, list[str]], tmp_path: Path) -> None:
    base, _, _ = http_dir
    spec = DataSpec(source="url", url=f"{base}/missing.csv")
    with pytest.raises(DataError, match="HTTP 404"):
        papillon_examples(spec, cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache").iterdir()), "no partial download left behind"


def test_pupa_default_mapping_is_the_tutorials() -> None:
    assert PUPA_FIELDS == {"user_query": "user_query", "target_response": "target_response", "pii_str": "pii_units"}
