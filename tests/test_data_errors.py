"""Bad input gets a clear error naming file, line and field, and never a half-written output.

Inputs are the hand-made ML-100K-format files of ``tests/movielens_tiny.py`` (12 ratings, 6 users,
3 items), edited line by line, so every expected line number and value is known by construction.
"""
import os

import pytest

from limaml import cli
from limaml.data import canonical, movielens, prepare
from limaml.data.errors import DataError
from tests import movielens_tiny


@pytest.fixture()
def ml100k_copy(tmp_path):
    movielens_tiny.write_ml100k(str(tmp_path / "ml100k"))
    return tmp_path / "ml100k"


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


# --- damaged input (issue 12, finding 4) -------------------------------------------------------
@pytest.mark.parametrize("value", ["1e20", "inf", "1e300", "nan", "-inf", "12.5",
                                   "9223372036854775808", "-5", "4102444801"])
def test_bad_timestamps_are_rejected_with_file_line_and_value(ml100k_copy, value):
    # Line 4 of u.data is user 2, item 3; only its timestamp is damaged.
    _edit_line(ml100k_copy / "u.data", 4, f"2\t3\t1\t{value}")
    with pytest.raises(DataError) as err:
        movielens.read_ml100k(str(ml100k_copy))
    assert err.value.path.endswith("u.data")
    assert (err.value.line, err.value.field) == (4, "timestamp")
    assert value in str(err.value)


def test_timestamp_window_edges_are_accepted(ml100k_copy):
    _edit_line(ml100k_copy / "u.data", 4, "2\t3\t1\t0")
    _edit_line(ml100k_copy / "u.data", 5, "3\t2\t2\t4102444800")  # 2100-01-01 00:00:00 UTC
    frame = movielens.read_ml100k(str(ml100k_copy))
    ts = dict(zip(zip(frame["user_id"], frame["item_id"]), frame["timestamp"]))
    assert (ts[("2", "3")], ts[("3", "2")]) == (0, 4_102_444_800)


def _prepared_bytes(out):
    return (out / canonical.INTERACTIONS_DIR / canonical.INTERACTIONS_FILE).read_bytes()


def _prepare_cli(src, out):
    return cli.main(["data", "prepare", "movielens-100k", "--source", str(src), "--output", str(out)])


@pytest.mark.parametrize("damage, expected", [
    # An empty u.data.
    (lambda d: (d / "u.data").write_bytes(b""), "u.data: no data rows"),
    # Half of the rows (a truncated copy): u.info declares 12.
    (lambda d: (d / "u.data").write_text("\n".join(movielens_tiny.RATINGS[:6]) + "\n"),
     "u.data: 6 ratings where u.info declares 12"),
    # Cut inside the last field: 12 rows, the last timestamp '881250960' cut to '8812'.
    (lambda d: (d / "u.data").write_text("\n".join(movielens_tiny.RATINGS[:-1] + ["6\t3\t4\t8812"])),
     "u.data, line 12: the last line has no line break"),
], ids=["empty", "fewer-rows", "last-field-cut"])
def test_empty_or_truncated_ratings_fail_and_keep_previous_output(ml100k_copy, tmp_path, capsys, damage,
                                                                  expected):
    out = tmp_path / "prepared"
    assert _prepare_cli(ml100k_copy, out) == 0
    before = _prepared_bytes(out)
    damage(ml100k_copy)
    capsys.readouterr()
    assert _prepare_cli(ml100k_copy, out) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert _prepared_bytes(out) == before
    assert sorted(os.listdir(tmp_path)) == ["ml100k", "prepared"]


def test_fewer_users_than_declared_names_the_user_file(ml100k_copy):
    # Drop nothing from u.data, but u.info claims 7 users where u.user has 6.
    (ml100k_copy / "u.info").write_text(movielens_tiny.info_text(users=7))
    with pytest.raises(DataError) as err:
        movielens.read_ml100k(str(ml100k_copy))
    assert err.value.path.endswith("u.user") and "6 users where u.info declares 7" in str(err.value)


def _readable_except(monkeypatch, path):
    """Makes ``path`` unreadable to the reader (works as root too, where chmod 000 does not)."""
    from limaml.data import textio

    real_open = open

    def fake_open(name, *args, **kwargs):
        if os.path.abspath(str(name)) == os.path.abspath(str(path)):
            raise PermissionError(13, "Permission denied", str(name))
        return real_open(name, *args, **kwargs)

    monkeypatch.setattr(textio, "open", fake_open, raising=False)


@pytest.mark.parametrize("kind, name, expected", [
    ("directory", "u.user", "u.user: is a directory, expected a file"),
    ("symlink-loop", "u.item", "u.item: symbolic link loop"),
    ("unreadable", "u.data", "u.data: permission denied"),
])
def test_os_errors_are_one_line_not_a_traceback(ml100k_copy, tmp_path, capsys, monkeypatch, kind, name,
                                                expected):
    target = ml100k_copy / name
    if kind == "directory":
        target.unlink()
        target.mkdir()
    elif kind == "symlink-loop":
        target.unlink()
        os.symlink(name, target)  # u.item -> u.item
    else:
        _readable_except(monkeypatch, target)
    code = _prepare_cli(ml100k_copy, tmp_path / "prepared")
    err = capsys.readouterr().err
    assert code == 2
    assert expected in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "prepared").exists()


@pytest.mark.parametrize("name, line_no, text, message", [
    # u.data line 5 repeats line 1 exactly.
    ("u.data", 5, "1\t1\t5\t881250949", "duplicated rating (user_id='1', item_id='1', timestamp=881250949), "
                                        "first on line 1"),
    # u.user line 5 reuses user id 2 (line 2).
    ("u.user", 5, "2|33|F|other|15213", "duplicated user (user='2'), first on line 2"),
    # u.item line 3 reuses item id 1 (line 1).
    ("u.item", 3, "1|Four Rooms (1995)|01-Jan-1995||http://x/3|0|1|1", "duplicated item (item='1'), "
                                                                        "first on line 1"),
])
def test_duplicates_name_the_right_file_and_lines(ml100k_copy, name, line_no, text, message):
    _edit_line(ml100k_copy / name, line_no, text)
    with pytest.raises(DataError) as err:
        movielens.read_ml100k(str(ml100k_copy))
    assert err.value.path.endswith(name) and err.value.line == line_no
    assert message in str(err.value)


@pytest.mark.parametrize("age", ["-5", "999"])
def test_an_age_outside_0_to_120_is_refused_with_file_line_and_value(ml100k_copy, age):
    _edit_line(ml100k_copy / "u.user", 3, f"3|{age}|M|writer|32067")
    with pytest.raises(DataError) as err:
        movielens.read_ml100k(str(ml100k_copy))
    assert err.value.path.endswith("u.user") and err.value.line == 3 and err.value.field == "age"
    assert f"age {age} outside [0, 120]" in str(err.value)
