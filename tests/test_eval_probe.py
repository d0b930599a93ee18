"""`kvblend eval` on bad and edge-case input: a one-line error and exit 1 (130 on Ctrl-C), nothing half-written,
nothing of an earlier run lost, and no earlier run's output taken as context."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from kvblend.cli import main
from kvblend.eval import report, runner
from kvblend.eval.config import EvalConfig
from kvblend.eval.datasets import DatasetError, read_jsonl
from kvblend.eval.holes import repository_holes

OWN = {"id": "a", "prefix": "x = ", "suffix": "\n", "middle": "1"}
ONE_ITEM = '{"task_id": "T/0", "prompt": "x = 1\\ny = ", "suffix": "\\n", "canonical_solution": "x + 1"}\n'


def _jsonl(path: Path, *recs: dict) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def _eval(dataset: Path, out: Path, *extra: str) -> int:
    return main(["eval", "--dataset", str(dataset), "--out", str(out), "--no-plots", *extra])


def test_damaged_gzip_is_a_dataset_error(tmp_path):
    data = gzip.compress(
        "".join(json.dumps(dict(OWN, id=f"i{i}", prefix="x = " * 50)) + "\n" for i in range(200)).encode()
    )
    damaged = bytearray(data)
    for k in range(30, 60):  # inside the deflate stream: zlib fails, not gzip's own header or CRC check
        damaged[k] ^= 0xFF
    path = tmp_path / "bad.jsonl.gz"
    path.write_bytes(bytes(damaged))
    with pytest.raises(DatasetError, match=r"cannot read dataset .*bad.jsonl.gz: Error -3 while decompressing"):
        read_jsonl(path)


def test_lone_surrogates_are_refused_with_their_line(tmp_path):
    path = tmp_path / "s.jsonl"
    # json.dumps writes "\ud800" as an escape, which json.loads turns back into a lone surrogate.
    _jsonl(path, OWN, dict(OWN, id="b", prefix="x = '\ud800'"))
    with pytest.raises(DatasetError, match=r"s.jsonl:2: field 'prefix' holds a lone surrogate '\\ud800' at index 5"):
        read_jsonl(path)
    _jsonl(path, dict(OWN, context_files={"lib.py": "y = '\udfff'\n"}))
    with pytest.raises(DatasetError, match=r"s.jsonl:1: context_files\['lib.py'\] holds a lone surrogate"):
        read_jsonl(path)


def test_lone_surrogate_fails_the_cli_before_the_model(tmp_path, capsys):
    path = _jsonl(tmp_path / "s.jsonl", dict(OWN, middle="\ud83d"))
    assert _eval(path, tmp_path / "o") == 1
    err = capsys.readouterr().err
    assert "field 'middle' holds a lone surrogate" in err and "Traceback" not in err


def test_bad_bytes_name_their_line_and_a_bom_or_crlf_is_read(tmp_path):
    path = tmp_path / "b.jsonl"
    line = json.dumps(OWN).encode()
    path.write_bytes(line + b"\n" + line.replace(b'"x = "', b'"x = \xff"') + b"\n")
    with pytest.raises(DatasetError, match=r"b.jsonl:2: not UTF-8 text: byte 0xff at byte 28 of the line"):
        read_jsonl(path)
    path.write_bytes(gzip.compress(line + b"\n"))  # a gzip file without .gz
    with pytest.raises(DatasetError, match=r"b.jsonl:1: not UTF-8 text: byte 0x8b .*\(a gzip file\?"):
        read_jsonl(path)
    second = json.dumps(dict(OWN, id="b")).encode()
    path.write_bytes(b"\xef\xbb\xbf" + line + b"\r\n" + second + b"\r\n")  # as Windows Notepad saves it
    kind, items = read_jsonl(path)
    assert kind == "own" and [(it.id, it.prefix, it.suffix) for it in items] == [
        ("a", "x = ", "\n"),
        ("b", "x = ", "\n"),
    ]


def test_a_record_of_the_other_kind_is_named_as_such(tmp_path):
    path = _jsonl(tmp_path / "m.jsonl", OWN, {"task_id": "T", "prompt": "", "suffix": "", "canonical_solution": ""})
    with pytest.raises(DatasetError, match=r"m.jsonl:2: a humaneval record in a file of own records"):
        read_jsonl(path)
    _jsonl(path, OWN, None)
    with pytest.raises(DatasetError, match=r"m.jsonl:2: expected an object, got null"):
        read_jsonl(path)


def test_holes_of_a_file_with_old_mac_line_ends(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_bytes(b"VALUE = 1\rdef helper(x):\r    return x\r")
    (tmp_path / "pkg" / "b.py").write_bytes(
        b"from pkg.a import helper, VALUE\r\rdef f(y):\r    z = helper(y) + VALUE\r"
    )
    (hole,) = repository_holes(tmp_path)  # was an IndexError: the lines were split on \n only
    assert (hole.id, hole.middle) == ("pkg/b.py:4", "z = helper(y) + VALUE")
    assert hole.prefix.endswith("def f(y):\r    ") and hole.suffix == "\r"


def test_context_tokens_are_checked_before_any_work(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"--context-tokens: .*got -5"):
        EvalConfig(tmp_path, tmp_path / "o", context_tokens=-5)
    path = _jsonl(tmp_path / "d.jsonl", OWN)
    assert _eval(path, tmp_path / "o", "--context-tokens", "-5") == 1
    assert "--context-tokens" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_a_failed_run_leaves_no_directory_it_made(tmp_path, capsys):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    (tmp_path / "keep").mkdir()
    assert _eval(path, tmp_path / "keep" / "a" / "b") == 1
    assert "holds no items" in capsys.readouterr().err
    assert (tmp_path / "keep").is_dir() and not (tmp_path / "keep" / "a").exists()


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_an_unwritable_out_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    def no_run(*args, **kwargs):
        raise AssertionError("the evaluation ran although its results could not be written")

    monkeypatch.setattr(runner, "evaluate", no_run)
    # /proc is a directory (mkdir -p passes) in which no file can be made, not even by root.
    assert _eval(_jsonl(tmp_path / "d.jsonl", OWN), Path("/proc")) == 1
    assert "cannot write results to /proc" in capsys.readouterr().err


def test_ctrl_c_is_one_line_and_keeps_the_earlier_results(tmp_path, capsys, monkeypatch):
    def interrupted(cfg, progress):
        progress(1, 4)
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "evaluate", interrupted)
    path = _jsonl(tmp_path / "d.jsonl", OWN)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "results.json").write_text("earlier\n")
    assert _eval(path, tmp_path / "old") == 130
    err = capsys.readouterr().err
    assert "kvblend: eval interrupted after 1 of 4 requests: no results written" in err and "Traceback" not in err
    assert (tmp_path / "old" / "results.json").read_text() == "earlier\n"
    assert [p.name for p in (tmp_path / "old").iterdir()] == ["results.json"]
    assert _eval(path, tmp_path / "new") == 130 and not (tmp_path / "new").exists()


def test_outputs_replace_an_earlier_run_whole_or_not_at_all(tmp_path, capsys, monkeypatch):
    data = tmp_path / "one.jsonl"
    data.write_text(ONE_ITEM)
    out = tmp_path / "o"
    out.mkdir()
    plots = ("quality_vs_ratio.png", "ttft_vs_context.png")
    for name in ("results.json", "summary.md", *plots):
        (out / name).write_text("earlier\n")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(report, "write_summary", full_disk)  # results.json is written by then
        assert _eval(data, out) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == sorted(["results.json", "summary.md", *plots])
    assert all(p.read_text() == "earlier\n" for p in out.iterdir())

    assert _eval(data, out) == 0  # --no-plots: the earlier run's plots would read as this run's
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "summary.md"]
    assert json.loads((out / "results.json").read_text())["config"]["n_items"] == 1


def test_an_earlier_runs_output_inside_the_repository_is_not_context(tmp_path, capsys):
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "__init__.py").write_text("")
    (repo / "pkg" / "a.py").write_text("VALUE = 1\n\n\ndef helper(x):\n    return x\n")
    (repo / "pkg" / "b.py").write_text("from pkg.a import helper, VALUE\n\n\ndef f(y):\n    z = helper(y) + VALUE\n")
    out = repo / "runs" / "e[1]"  # not git-ignored; glob characters in the name are taken literally
    out.mkdir(parents=True)
    (out / "notes.md").write_text("the user's own notes\n")
    args = ("--modes", "full", "--cache-dir", str(tmp_path / "cache"))
    for _ in range(2):  # the second run must not retrieve the first one's results.json (it holds the reference)
        assert _eval(repo, out, *args) == 0
        rows = json.loads((out / "results.json").read_text())["items"]
        assert [r["reference"] for r in rows] == ["z = helper(y) + VALUE"]
        assert not any(c.startswith("runs/e[1]/") and "notes.md" not in c for r in rows for c in r["context"])
    capsys.readouterr()
    assert runner.output_ignores(repo, out)[0] == "/runs/e\\[1]/results.json"
    assert runner.output_ignores(repo, repo)[0] == "/results.json"  # --dataset . --out .
    assert runner.output_ignores(repo, tmp_path / "elsewhere") == ()


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({".": "y = 1\n"}, r"context_files path '\.' must name a file in the workspace"),
        ({"a.py": "y = 1\n", "a.py/b.py": "z = 2\n"}, r"'a.py' is a file, but 'a.py/b.py' needs it as a directory"),
        ({"a.py": "y = 1\n", "./a.py": "z = 2\n"}, r"paths 'a.py' and './a.py' name the same file"),
    ],
)
def test_context_files_that_cannot_make_one_workspace_fail_at_their_line(tmp_path, files, message):
    # These used to load, and fail only after the model had loaded, naming a temporary directory.
    path = _jsonl(tmp_path / "c.jsonl", OWN, dict(OWN, id="b", context_files=files))
    with pytest.raises(DatasetError, match=rf"c.jsonl:2: .*{message}"):
        read_jsonl(path)
