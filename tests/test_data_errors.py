"""Bad input gets a clear error naming file, line and field, and never a half-written output."""
import os
import shutil

import pytest

from limaml import cli
from limaml.data import canonical, movielens, prepare
from limaml.data.errors import DataError
from tests.conftest_data import ML100K, require


@pytest.fixture()
def ml100k_copy(tmp_path):
    src = require(ML100K)
    dst = tmp_path / "ml100k"
    dst.mkdir()
    for name in ("u.data", "u.user", "u.item", "u.genre"):
        shutil.copy(os.path.join(src, name), dst / name)
        os.chmod(dst / name, 0o644)
    return dst


def _edit_line(path, line_no, new_text):
    lines = path.read_text(encoding="latin-1").split("\n")
    lines[line_no - 1] = new_text
    path.write_text("\n".join(lines), encoding="latin-1")


def test_malformed_row_names_file_and_line(ml100k_copy):
    _edit_line(ml100k_copy / "u.data", 5, "1\t2\t3")
    with pytest.raises(DataError) as err:
        movielens.read_ml100k(str(ml100k_copy))
    assert err.value.line == 5 and err.value.path.endswith("u.data")
    assert "expected 4 fields" in str(err.value) and "found 3" in str(err.value)


def test_non_numeric_timestamp_names_field(ml100k_copy):
    _edit_line(ml100k_copy / "u.data", 7, "1\t2\t3\tyesterday")
    with pytest.raises(DataError) as err:
        movielens.read_ml100k(str(ml100k_copy))
    assert (err.value.line, err.value.field) == (7, "timestamp")
    assert "'yesterday'" in str(err.value)


def test_missing_column_in_user_file(ml100k_copy):
    _edit_line(ml100k_copy / "u.user", 3, "3|23|M|writer")
    with pytest.raises(DataError) as err:
        movielens.read_ml100k(str(ml100k_copy))
    assert err.value.path.endswith("u.user") and err.value.line == 3


def test_unknown_encoding_utf16(ml100k_copy):
    text = (ml100k_copy / "u.data").read_text()
    (ml100k_copy / "u.data").write_bytes(text.encode("utf-16"))
    with pytest.raises(DataError, match="unsupported encoding"):
        movielens.read_ml100k(str(ml100k_copy))


def test_undecodable_byte_names_line(ml100k_copy):
    raw = (ml100k_copy / "u.data").read_bytes().split(b"\n")
    raw[9] = b"1\t2\t3\t88\xe9"
    (ml100k_copy / "u.data").write_bytes(b"\n".join(raw))
    with pytest.raises(DataError) as err:
        movielens.read_ml100k(str(ml100k_copy))
    assert err.value.line == 10 and "ascii" in str(err.value)


def test_unknown_user_in_ratings(ml100k_copy):
    _edit_line(ml100k_copy / "u.data", 2, "99999\t2\t3\t881250949")
    with pytest.raises(DataError) as err:
        movielens.read_ml100k(str(ml100k_copy))
    assert err.value.line == 2 and err.value.field == "user_id" and "'99999'" in str(err.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="u.data: file not found"):
        movielens.read_ml100k(str(tmp_path))


def test_failed_prepare_keeps_previous_output(ml100k_copy, tmp_path, capsys):
    out = tmp_path / "prepared"
    prepare.prepare("movielens-100k", str(out), source=str(ml100k_copy))
    before = (out / canonical.INTERACTIONS_DIR / canonical.INTERACTIONS_FILE).read_bytes()
    _edit_line(ml100k_copy / "u.data", 5, "1\t2\tfive\t881250949")
    code = cli.main(["data", "prepare", "movielens-100k", "--source", str(ml100k_copy), "--output", str(out)])
    assert code == 2
    assert "u.data, line 5, field 'rating'" in capsys.readouterr().err
    assert (out / canonical.INTERACTIONS_DIR / canonical.INTERACTIONS_FILE).read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == sorted(["ml100k", "prepared"])  # no temp folders left


def test_failed_first_prepare_writes_nothing(ml100k_copy, tmp_path):
    _edit_line(ml100k_copy / "u.item", 4, "4|broken")
    out = tmp_path / "prepared"
    with pytest.raises(DataError):
        prepare.prepare("movielens-100k", str(out), source=str(ml100k_copy))
    assert not out.exists()
