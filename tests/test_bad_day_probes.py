"""The issue-12 probe battery (``benchmarks/bad_day_probes.py``): a fast subset passes on the real
CLI, and the classifier names planted failures (so a probe can fail)."""
from __future__ import annotations

import sys
import time

import pytest

from benchmarks import bad_day_probes as bdp

# Finding 1 (--output) and finding 4 (damaged input): about one second of CLI each. The last four
# failed when the battery was first run (a FIFO hung, a negative age was stored as 56+, a bad genre
# index named no file, a damaged gzip gave a traceback) and the last one named only '[Errno 17]'.
FAST = ("F1-output-is-source", "F1-output-is-file", "F1-output-symlink", "F1-failed-rerun-keeps-output",
        "F4-ts-1e20", "F4-ts--5", "F4-empty-u.data", "F4-dir-u.user", "F4-dup-user", "F4-crlf-ok",
        "F4-fifo-u.data", "F4-age-negative", "F4-genre-index", "F4-ml1m-gz-corrupt", "F1-parent-is-file")


@pytest.fixture()
def ws(tmp_path):
    workspace = bdp.Workspace(tmp_path / "ws")
    yield workspace
    workspace.close()


def test_data_prepare_and_damaged_input_probes_pass(ws):
    probes = [p for p in bdp.PROBES if p.id in FAST]
    assert len(probes) == len(FAST)
    rows = bdp.run_probes(probes, ws)
    failed = [(r.id, r.verdict, r.observed) for r in rows if r.verdict != bdp.PASS]
    assert not failed, failed
    table = bdp.markdown_table(rows)
    assert table.count("\n") == len(FAST) + 1 and "| F4-ts-1e20 | 4 |" in table
    assert bdp.summary_line(rows).startswith(f"{len(FAST)} probes: {len(FAST)} passed, 0 failed (lost data 0,")


# Stand-ins for the CLI that misbehave in one way each, run on a real ML-100K folder.
PLANTED = [
    ("import shutil, sys; shutil.rmtree(sys.argv[1]); sys.exit(2)", bdp.LOST),
    ("import os, sys; os.remove(sys.argv[1] + '/u.info'); print('limaml: error: refused', file=sys.stderr); "
     "sys.exit(2)", bdp.LOST),
    ("import sys; open(sys.argv[1] + '/u.data', 'a').write('1\\t1\\t5\\t1\\n'); sys.exit(2)", bdp.CORRUPTED),
    ("import sys; print('limaml: error: refused', file=sys.stderr); sys.exit(0)", bdp.ACCEPTED),
    ("raise ValueError('boom')", bdp.TRACEBACK),
    ("import time; time.sleep(30)", bdp.HANG),
    ("import sys; print('limaml: error: something went wrong', file=sys.stderr); sys.exit(2)", bdp.WRONG),
    ("import sys; print('limaml: error: refused\\nmore', file=sys.stderr); sys.exit(2)", bdp.WRONG),
    ("import sys; print('limaml: error: refused', file=sys.stderr); sys.exit(2)", bdp.PASS),
]


@pytest.mark.parametrize("script, verdict", PLANTED,
                         ids=["deletes-input", "deletes-one-file", "appends-a-row", "exit-0", "traceback",
                              "sleeps", "vague-message", "two-lines", "clean-refusal"])
def test_classifier_names_planted_failures(ws, tmp_path, script, verdict):
    src = bdp.write_ml100k(tmp_path / "ml100k")
    before = bdp.snapshot(src)
    got, observed = bdp.cli_probe([sys.executable, "-c", script, str(src)],
                                  bdp.CliExpect(message=("refused",), protect=[src]), ws, timeout_s=3)
    assert got == verdict, observed
    if verdict == bdp.LOST:
        assert "entries gone" in observed
    elif verdict != bdp.CORRUPTED:
        assert bdp.snapshot(src) == before


def test_a_probe_that_does_not_return_is_a_hang_and_the_run_goes_on(ws):
    slow = bdp.Probe("T-slow", 4, "sleeps", "returns", lambda w, d: time.sleep(30) or (bdp.PASS, ""), timeout_s=0.5)
    broken = bdp.Probe("T-broken", 4, "raises", "returns", lambda w, d: 1 / 0)
    fine = bdp.Probe("T-fine", 4, "returns", "returns", lambda w, d: (bdp.PASS, "ok"))
    t0 = time.monotonic()
    rows = bdp.run_probes([slow, broken, fine], ws)
    assert time.monotonic() - t0 < 5
    assert [r.verdict for r in rows] == [bdp.HANG, bdp.WRONG, bdp.PASS]
    assert "ZeroDivisionError" in rows[1].observed
    assert bdp.summary_line(rows).startswith("3 probes: 1 passed, 2 failed (lost data 0, corrupted 0, traceback 0, "
                                             "hang 1, wrong error 1, accepted bad input 0)")


def test_http_verdicts_read_the_error_code_however_the_json_is_spaced():
    """The serving probes' verdicts: the service answers compact JSON (orjson), so the code is
    read from the parsed body; a wrong or missing code, or a body that is not JSON, is a wrong
    error, as is an unexpected status."""
    compact = b'{"error":"user_id: bad","code":"bad_request","field":"user_id"}'
    spaced = b'{"error": "user_id: bad", "code": "bad_request"}'
    whole = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 63\r\n\r\n" + compact
    for raw in (compact, spaced, whole):
        assert bdp.classify_http(400, [400], raw, code="bad_request")[0] == bdp.PASS
    assert bdp.classify_http(400, [400], compact, code="too_large")[0] == bdp.WRONG
    assert bdp.classify_http(400, [400], b'{"error":"x"}', code="bad_request")[0] == bdp.WRONG
    assert bdp.classify_http(400, [400], b"bad_request", code="bad_request")[0] == bdp.WRONG
    assert bdp.classify_http(400, [400], b'["code","bad_request"]', code="bad_request")[0] == bdp.WRONG
    assert bdp.classify_http(404, [400], compact, code="bad_request")[0] == bdp.WRONG
    assert bdp.classify_http(500, [400], compact)[0] == bdp.TRACEBACK
