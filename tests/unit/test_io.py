"""Tests for the run-directory file helpers: atomic writes and append-only JSONL."""

from __future__ import annotations

import json

import pytest

from selftrain.io import JsonlWriter, read_jsonl, write_json_atomic, write_text_atomic


def test_write_text_atomic_creates_replaces_and_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "note.txt"
    write_text_atomic(path, "first version, which is longer")
    assert path.read_text(encoding="utf-8") == "first version, which is longer"
    write_text_atomic(path, "second")
    assert path.read_text(encoding="utf-8") == "second"
    assert sorted(p.name for p in path.parent.iterdir()) == ["note.txt"]


def test_write_json_atomic_round_trips_and_leaves_no_temp(tmp_path):
    path = tmp_path / "state.json"
    write_json_atomic(path, {"stage": "sft", "step": 1})
    write_json_atomic(path, {"stage": "dpo", "steps": [1, 2], "name": "ü"})
    assert json.loads(path.read_text(encoding="utf-8")) == {
        "stage": "dpo",
        "steps": [1, 2],
        "name": "ü",
    }
    assert path.read_text(encoding="utf-8").endswith("\n")
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_write_text_atomic_failure_keeps_old_content_and_no_temp(tmp_path):
    path = tmp_path / "note.txt"
    write_text_atomic(path, "old")
    with pytest.raises(TypeError):
        write_text_atomic(path, 123)  # type: ignore[arg-type]
    assert path.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["note.txt"]


def test_read_jsonl_missing_file_is_empty(tmp_path):
    assert read_jsonl(tmp_path / "nope.jsonl") == []


def test_read_jsonl_reads_records_and_skips_blank_lines(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n\n{"b": 2}\n', encoding="utf-8")
    assert read_jsonl(path) == [{"a": 1}, {"b": 2}]


def test_read_jsonl_drops_torn_last_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n{"b": 2}\n{"c": [1, 2', encoding="utf-8")
    assert read_jsonl(path) == [{"a": 1}, {"b": 2}]


def test_read_jsonl_bad_middle_line_names_file_and_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n{"b": 2}\nnot json\n{"c": 3}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="invalid JSON") as exc:
        read_jsonl(path)
    msg = str(exc.value)
    assert str(path) in msg
    assert "line 3" in msg


def test_read_jsonl_bad_last_line_with_newline_is_an_error(tmp_path):
    # A line that ends with a newline was written completely: a bad one is not a torn append.
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n{"b": \n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 2"):
        read_jsonl(path)


def test_jsonl_writer_creates_and_appends(tmp_path):
    path = tmp_path / "deep" / "out.jsonl"
    with JsonlWriter(path) as w:
        w.write({"i": 0})
        w.write_many([{"i": 1}, {"i": 2, "text": "ü"}])
    with JsonlWriter(path) as w:
        w.write({"i": 3})
    assert read_jsonl(path) == [{"i": 0}, {"i": 1}, {"i": 2, "text": "ü"}, {"i": 3}]
    assert path.read_text(encoding="utf-8").count("\n") == 4


def test_jsonl_writer_write_is_visible_before_close(tmp_path):
    path = tmp_path / "out.jsonl"
    w = JsonlWriter(path)
    try:
        w.write({"i": 0})
        assert read_jsonl(path) == [{"i": 0}]
    finally:
        w.close()


def test_jsonl_writer_truncates_torn_last_line_before_appending(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text('{"i": 0}\n{"i": 1}\n{"i": 2, "te', encoding="utf-8")
    with JsonlWriter(path) as w:
        w.write({"i": 3})
    assert path.read_text(encoding="utf-8") == '{"i": 0}\n{"i": 1}\n{"i": 3}\n'
    assert read_jsonl(path) == [{"i": 0}, {"i": 1}, {"i": 3}]


def test_jsonl_writer_torn_only_line_is_removed(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text('{"i": 0, "t', encoding="utf-8")
    with JsonlWriter(path) as w:
        w.write({"i": 1})
    assert read_jsonl(path) == [{"i": 1}]


def test_jsonl_writer_keeps_intact_file(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text('{"i": 0}\n', encoding="utf-8")
    with JsonlWriter(path) as w:
        w.write({"i": 1})
    assert read_jsonl(path) == [{"i": 0}, {"i": 1}]


def test_jsonl_writer_keeps_complete_record_missing_newline(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text('{"i": 0}\n{"i": 1}', encoding="utf-8")
    assert read_jsonl(path) == [{"i": 0}, {"i": 1}]
    with JsonlWriter(path) as w:
        w.write({"i": 2})
    assert read_jsonl(path) == [{"i": 0}, {"i": 1}, {"i": 2}]
