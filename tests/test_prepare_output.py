"""``limaml data prepare --output`` replaces only what it wrote itself (issue 12, finding 1).

Replaceable: nothing there, an empty folder, or a previous output (``manifest.json`` +
``interactions/data.parquet``). Anything else (the source dataset, a foreign folder, a file, a
symbolic link) is refused with exit code 2, the path named, and nothing deleted.
"""
import json
import os

import pytest

from limaml import cli
from limaml.data import canonical
from tests import movielens_tiny


def _snapshot(folder):
    """{relative path: bytes} of every file under ``folder``."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            out[os.path.relpath(path, folder)] = open(path, "rb").read()
    return out


def _prepare(src, out):
    return cli.main(["data", "prepare", "movielens-100k", "--source", str(src), "--output", str(out)])


@pytest.fixture()
def source(tmp_path):
    return movielens_tiny.write_ml100k(str(tmp_path / "ml100k"))


def test_prepare_into_its_own_source_is_refused_and_keeps_the_files(source, capsys):
    before = _snapshot(source)
    assert sorted(before) == ["u.data", "u.genre", "u.info", "u.item", "u.user"]
    assert _prepare(source, source) == 2
    err = capsys.readouterr().err
    assert f"output {os.path.abspath(source)} holds files that limaml data prepare did not write" in err
    assert "nothing was deleted" in err and "choose a new or empty --output folder" in err
    assert _snapshot(source) == before
    assert sorted(os.listdir(os.path.dirname(source))) == ["ml100k"]  # no temp folders beside it


@pytest.mark.parametrize("make, what", [
    (lambda p: p.write_text("my notes\n"), "is an existing file"),
    (lambda p: (p.mkdir(), (p / "keep.txt").write_text("x")), "holds files that limaml data prepare did not write"),
    # Looks like ours, plus a foreign file: still not ours.
    (lambda p: (p.mkdir(), (p / "manifest.json").write_text('{"dataset": "x"}'), (p / "interactions").mkdir(),
                (p / "thesis.tex").write_text("x")), "holds files that limaml data prepare did not write"),
    # A manifest.json that is not ours (no dataset key).
    (lambda p: (p.mkdir(), (p / "manifest.json").write_text('{"name": "npm"}'), (p / "interactions").mkdir()),
     "holds files that limaml data prepare did not write"),
], ids=["file", "foreign-folder", "ours-plus-foreign", "foreign-manifest"])
def test_foreign_outputs_are_refused(source, tmp_path, capsys, make, what):
    out = tmp_path / "out"
    make(out)
    before = _snapshot(out) if out.is_dir() else out.read_bytes()
    assert _prepare(source, out) == 2
    assert f"output {out} {what}" in capsys.readouterr().err
    assert (_snapshot(out) if out.is_dir() else out.read_bytes()) == before


def test_symlink_output_is_refused(source, tmp_path, capsys):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "data.csv").write_text("a,b\n")
    link = tmp_path / "out"
    os.symlink(target, link)
    assert _prepare(source, link) == 2
    assert f"output {link} is a symbolic link" in capsys.readouterr().err
    assert link.is_symlink() and (target / "data.csv").read_text() == "a,b\n"


def test_rerun_into_own_output_replaces_it_atomically(source, tmp_path):
    out = tmp_path / "out"
    out.mkdir()  # an empty folder is fine
    assert _prepare(source, out) == 0
    assert json.loads((out / canonical.MANIFEST_FILE).read_text())["rows"] == 12
    # Drop the last two ratings (and declare 10): the rerun must replace the previous output.
    (tmp_path / "ml100k" / "u.data").write_text("\n".join(movielens_tiny.RATINGS[:10]) + "\n")
    (tmp_path / "ml100k" / "u.info").write_text(movielens_tiny.info_text(ratings=10))
    assert _prepare(source, out) == 0
    assert json.loads((out / canonical.MANIFEST_FILE).read_text())["rows"] == 10
    assert len(canonical.read_prepared(str(out))) == 10
    assert sorted(os.listdir(out)) == [canonical.INTERACTIONS_DIR, canonical.MANIFEST_FILE]
    assert sorted(os.listdir(tmp_path)) == ["ml100k", "out"]  # no .prepare-/.old- folders left


def test_write_prepared_refuses_directly(tmp_path):
    out = tmp_path / "src"
    out.mkdir()
    (out / "u.data").write_text("1\t1\t5\t881250949\n")
    frame = canonical.read_prepared  # any callable; the check fires before the frame is used
    with pytest.raises(canonical.NotOurOutputError, match="nothing was deleted"):
        canonical.write_prepared(frame, str(out), {"dataset": "x"})
    assert (out / "u.data").read_text() == "1\t1\t5\t881250949\n"


def test_unwritable_output_location_is_one_line(source, tmp_path, capsys):
    (tmp_path / "plain-file").write_text("x")
    assert _prepare(source, tmp_path / "plain-file" / "out") == 2  # parent is a file
    err = capsys.readouterr().err
    assert "plain-file" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
