"""Issue 15: every bad input is a one-line error that names the file, line or setting and says
what to do (eval's resume settings, unreadable and empty data files, model and checkpoint
paths, file modes, output folders, a full disk or read-only folder)."""

from __future__ import annotations

import errno
import json
import os
import stat

import pytest
import torch

from selftrain import io
from selftrain.eval.suite import check_out_dir, load_student, run_eval
from selftrain.io import JsonlWriter, read_json, read_jsonl, write_json_atomic, write_text_atomic
from selftrain.models import ModelLoadError, checkpoint_folder
from selftrain.tasks.data import DataError
from selftrain.tasks.math_word import GSM8KTask as GSM8K
from selftrain.tasks.math_word import SvampTask as SVAMP


def _gsm8k_dir(tmp_path, n: int = 3):
    """A data directory holding a small gsm8k (train and test)."""
    root = tmp_path / "data"
    (root / "gsm8k").mkdir(parents=True)
    for split in ("train", "test"):
        rows = [
            {"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}"}
            for i in range(1, n + 1)
        ]
        text = "".join(json.dumps(r) + "\n" for r in rows)
        (root / "gsm8k" / f"{split}.jsonl").write_text(text, encoding="utf-8")
    return root


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- 1. eval resumes only answers made with the same settings ------------------------------


def test_eval_resume_refuses_answers_made_with_other_settings(make_student, tmp_path):
    root = _gsm8k_dir(tmp_path)
    out = tmp_path / "ev"
    student = make_student(autocast_bf16=False)
    run_eval(student, [GSM8K(data_dir=root)], out, limit=2, max_new_tokens=4)
    saved = json.loads((out / "gsm8k.generate.settings.json").read_text())
    assert saved["max_new_tokens"] == 4 and saved["style"] == "cot" and saved["split"] == "test"
    assert saved["adapter_sha256"] is None and saved["precision"] == "fp32"
    # more questions and another batch size: the same answers, resumed
    run_eval(student, [GSM8K(data_dir=root)], out, limit=3, max_new_tokens=4, batch_size=1)
    assert len(read_jsonl(out / "gsm8k.generate.jsonl")) == 3
    before = (out / "gsm8k.generate.jsonl").read_text()
    changes = [
        ({"max_new_tokens": 5}, "max_new_tokens 4 -> 5"),
        ({"calculator": True}, "calculator False -> True"),
        ({"split": "train"}, "split 'test' -> 'train'"),
    ]
    for kwargs, said in changes:
        args = {"limit": 2, "max_new_tokens": 4, **kwargs}
        with pytest.raises(ValueError, match="made with other settings") as e:
            run_eval(student, [GSM8K(data_dir=root)], out, **args)
        assert said in str(e.value) and str(out) in str(e.value) and "another --out" in str(e.value)
        assert "gsm8k.generate.settings.json to start over" in str(e.value)
    for task, said in [
        (GSM8K(data_dir=root, style="direct"), "style 'cot' -> 'direct'"),
        (GSM8K(data_dir=root, style="fewshot", n_shots=2), "n_shots None -> 2"),
    ]:
        with pytest.raises(ValueError, match=said):
            run_eval(student, [task], out, limit=2, max_new_tokens=4)
    others = [
        (make_student(system_prompt="Be brief.", autocast_bf16=False), {}),
        (make_student(autocast_bf16=True), {}),
        (student, {"settings": {"model": "elsewhere"}}),
    ]
    said = [
        r"system_prompt '.+' -> 'Be brief\.'",
        "precision 'fp32' -> 'bf16'",
        "model '.+ -> 'elsewhere'",
    ]
    for (other, kwargs), pattern in zip(others, said, strict=True):
        with pytest.raises(ValueError, match=pattern):
            run_eval(other, [GSM8K(data_dir=root)], out, limit=2, max_new_tokens=4, **kwargs)
    assert (out / "gsm8k.generate.jsonl").read_text() == before  # nothing appended


def test_eval_resume_tells_checkpoints_apart_by_their_weights(make_student, tmp_path):
    root = _gsm8k_dir(tmp_path)
    trained = make_student(lora=True)
    with torch.no_grad():
        for name, p in trained.model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    trained.save(tmp_path / "run" / "sft" / "model")
    plain = make_student()
    plain.apply_checkpoint(tmp_path / "run" / "sft")
    assert plain.checkpoint == tmp_path / "run" / "sft" / "model"
    out = tmp_path / "ev"
    run_eval(plain, [GSM8K(data_dir=root)], out, limit=2, max_new_tokens=4)
    with pytest.raises(ValueError, match=r"adapter_sha256 '[0-9a-f]+\.\.\. -> None"):
        run_eval(make_student(), [GSM8K(data_dir=root)], out, limit=2, max_new_tokens=4)
    # the same checkpoint, copied elsewhere: the same answers
    import shutil

    shutil.copytree(tmp_path / "run", tmp_path / "copy")
    again = make_student()
    again.apply_checkpoint(tmp_path / "copy" / "sft")
    run_eval(again, [GSM8K(data_dir=root)], out, limit=2, max_new_tokens=4)


def test_cli_eval_refuses_to_resume_with_another_max_new_tokens(tiny_dir, tmp_path):
    from typer.testing import CliRunner

    from selftrain.cli import app

    root = _gsm8k_dir(tmp_path)
    args = ["eval", "--model", str(tiny_dir), "--tasks", "gsm8k", "--data-dir", str(root)]
    args += ["--out", str(tmp_path / "ev"), "--precision", "fp32", "--limit", "2"]
    first = CliRunner().invoke(app, [*args, "--max-new-tokens", "4"])
    assert first.exit_code == 0, first.output
    second = CliRunner().invoke(app, [*args, "--max-new-tokens", "5"])
    assert second.exit_code != 0 and "max_new_tokens 4 -> 5" in second.output
    assert "Traceback" not in second.output


# -- 2. data files that are not UTF-8 or not JSON name the file (and line) -----------------


def test_a_jsonl_data_file_that_is_not_utf8_names_file_and_line(tmp_path):
    root = _gsm8k_dir(tmp_path)
    path = root / "gsm8k" / "test.jsonl"
    path.write_bytes(path.read_bytes().replace(b"What is 2", b"What is \xff2"))
    with pytest.raises(DataError, match=r"gsm8k/test\.jsonl:2: not UTF-8 text \(byte 0xff\)"):
        GSM8K(data_dir=root).load("test")


def test_a_json_data_file_that_is_not_utf8_or_not_json_names_the_file(tmp_path):
    (tmp_path / "svamp").mkdir()
    path = tmp_path / "svamp" / "SVAMP.json"
    path.write_bytes(b'[{"ID": "chal-1",\n "Body": "caf\xe9"}]')
    with pytest.raises(DataError, match=r"SVAMP\.json:2: not UTF-8 text"):
        SVAMP(data_dir=tmp_path).load()
    path.write_text('[{"ID": "chal-1",\n "Body": }]', encoding="utf-8")
    with pytest.raises(DataError, match=r"SVAMP\.json:2: invalid JSON"):
        SVAMP(data_dir=tmp_path).load()


def test_run_files_that_are_not_utf8_name_file_and_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": "\xc3("}\n')
    with pytest.raises(ValueError, match=r"a\.jsonl: line 2: not UTF-8 text \(byte 0xc3\)"):
        read_jsonl(path)
    path = tmp_path / "state.json"
    path.write_bytes(b'{"stage": "\xff"}')
    with pytest.raises(ValueError, match=r"state\.json: line 1: not UTF-8 text"):
        read_json(path)


# -- 3. an empty split names its file and split ---------------------------------------------


@pytest.mark.parametrize("content", ["", "\n\n"])
def test_an_empty_jsonl_split_names_file_and_split(tmp_path, content):
    root = _gsm8k_dir(tmp_path)
    (root / "gsm8k" / "test.jsonl").write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=r"split 'test' has no records in .*gsm8k/test\.jsonl"):
        GSM8K(data_dir=root).load("test")


@pytest.mark.parametrize("content", ["", "[]"])
def test_an_empty_json_split_names_file_and_split(tmp_path, content):
    (tmp_path / "svamp").mkdir()
    (tmp_path / "svamp" / "SVAMP.json").write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=r"svamp: split 'test' has no records in .*SVAMP\.json"):
        SVAMP(data_dir=tmp_path).load()


def test_srit_data_refuses_a_split_with_no_questions():
    from selftrain.config import load_recipe
    from selftrain.stages.data import srit_splits
    from selftrain.tasks.arithmetic import ArithmeticTask

    recipe = load_recipe(None, {"eval": {"n_per_split": {"in_domain": 0}}})
    task = ArithmeticTask(n_train=20, n_validation=5, n_test=5)
    with pytest.raises(ValueError) as e:  # before any run directory is made
        srit_splits(task, recipe)
    said = str(e.value)
    assert "task 'arithmetic': split 'in_domain' loaded 0 questions" in said
    assert "eval.n_per_split.in_domain" in said


# -- 4. model and checkpoint paths ------------------------------------------------------------


def test_a_model_path_that_is_a_plain_file_says_so(tmp_path):
    from selftrain.config import StudentConfig
    from selftrain.models import load_model_and_tokenizer

    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="is a file, not a model; give a model folder"):
        load_model_and_tokenizer(StudentConfig(model=str(weights)))
    with pytest.raises(ModelLoadError, match="no such model folder; give a model folder"):
        load_model_and_tokenizer(StudentConfig(model=str(tmp_path / "nope")))


def test_a_missing_or_empty_checkpoint_folder_is_named_before_the_model_loads(
    tiny_dir, tmp_path, monkeypatch
):
    from selftrain.models import Student

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the checkpoint was checked")

    monkeypatch.setattr(Student, "load", no_load)
    missing = tmp_path / "runs" / "x" / "sft"
    with pytest.raises(ModelLoadError, match=f"{missing}: no such checkpoint folder"):
        load_student(str(tiny_dir), adapter=missing)
    (missing / "model").mkdir(parents=True)
    with pytest.raises(ModelLoadError, match=r"sft/model: no checkpoint in it.*stage finished"):
        load_student(str(tiny_dir), adapter=missing)
    (missing / "model" / "adapter_config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ModelLoadError, match="no checkpoint in it"):
        checkpoint_folder(missing)
    (missing / "model" / "adapter_model.safetensors").write_bytes(b"")
    assert checkpoint_folder(missing) == missing / "model"
    with pytest.raises(ModelLoadError, match="is a file, not a checkpoint folder"):
        checkpoint_folder(missing / "model" / "adapter_config.json")


def test_load_weights_names_a_missing_adapter_file(make_student, tmp_path):
    student = make_student(lora=True)
    (tmp_path / "ckpt").mkdir()
    with pytest.raises(ModelLoadError, match=r"ckpt/adapter_model\.safetensors: no such file"):
        student.load_weights(tmp_path / "ckpt")


# -- 5. atomically written files get the usual mode ------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_atomic_and_appended_files_get_the_same_mode(tmp_path, umask):
    old = os.umask(umask)
    try:
        write_json_atomic(tmp_path / "state.json", {"a": 1})
        with JsonlWriter(tmp_path / "rows.jsonl") as w:
            w.write({"a": 1})
    finally:
        os.umask(old)
    want = 0o666 & ~umask
    assert _mode(tmp_path / "state.json") == want == _mode(tmp_path / "rows.jsonl")


# -- 6. output paths that are files or folders ---------------------------------------------


def test_eval_out_that_is_a_file_is_refused_before_anything_is_written(make_student, tmp_path):
    out = tmp_path / "results.json"
    out.write_text("{}", encoding="utf-8")
    with pytest.raises(ValueError, match=f"OUT is a file, not a folder: {out}; give --out"):
        run_eval(make_student(), [], out)
    with pytest.raises(ValueError, match="OUT is inside a file, not a folder"):
        check_out_dir(out / "sub" / "dir")
    check_out_dir(tmp_path / "new" / "folder")  # to be made: fine


def test_an_atomic_write_onto_a_folder_names_it(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(IsADirectoryError, match="is a folder; give a file name") as e:
        write_json_atomic(tmp_path / "out", {"a": 1})
    assert e.value.filename == str(tmp_path / "out")
    assert os.listdir(tmp_path / "out") == []


# -- 7. a full disk or a read-only folder names the file being written ---------------------


def test_a_full_disk_names_the_file_being_written(tmp_path, monkeypatch):
    path = tmp_path / "state.json"

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.os, "fsync", full)
    with pytest.raises(OSError, match="No space left on device") as e:
        write_text_atomic(path, "x")
    assert (e.value.errno, e.value.filename) == (errno.ENOSPC, str(path))
    assert os.listdir(tmp_path) == []  # no temporary file left behind
    monkeypatch.undo()

    class FullFile:
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            pass

    w = JsonlWriter(tmp_path / "rows.jsonl")
    w._f.close()
    w._f = FullFile()
    for write in (lambda: w.write({"a": 1}), lambda: w.write_many([{"a": 1}])):
        with pytest.raises(OSError) as e:
            write()
        assert (e.value.errno, e.value.filename) == (errno.ENOSPC, str(tmp_path / "rows.jsonl"))
        assert str(tmp_path / "rows.jsonl") in str(e.value)


def test_a_refused_temporary_file_names_the_file_being_written(tmp_path, monkeypatch):
    def refused(dir, prefix, suffix):  # what a read-only folder does, even under root
        raise PermissionError(errno.EACCES, "Permission denied", f"{dir}/{prefix}x{suffix}")

    monkeypatch.setattr(io.tempfile, "mkstemp", refused)
    with pytest.raises(PermissionError) as e:
        write_text_atomic(tmp_path / "state.json", "x")
    assert e.value.filename == str(tmp_path / "state.json")
    assert str(e.value) == f"[Errno 13] Permission denied: '{tmp_path / 'state.json'}'"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores modes")
def test_a_read_only_folder_names_the_file_being_written(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(PermissionError) as e:
            write_text_atomic(folder / "state.json", "x")
        assert e.value.filename == str(folder / "state.json")
        with pytest.raises(PermissionError) as e:
            JsonlWriter(folder / "rows.jsonl")
        assert e.value.filename == str(folder / "rows.jsonl")
    finally:
        folder.chmod(0o700)
