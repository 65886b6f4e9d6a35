"""Issue 12 ("Nothing lost on a bad day"): hostile-but-fair probes of the real code, as a table.

Each probe does one bad-day thing to the data tools, the embedding stores or the serving stack
and classifies what happened:

* ``pass``: the expected behaviour (a clean refusal, or a correct result);
* ``lost_data``: a file, folder, committed version or served embedding that existed before is gone;
* ``corrupted``: something that must not change changed, a wrong value was written or served,
  or temporary folders were left behind;
* ``traceback``: a Python traceback on the command line (or HTTP 500 / gRPC INTERNAL);
* ``hang``: no answer within the probe's timeout (the probe is abandoned, the script goes on);
* ``wrong_error``: it failed, but with the wrong exit code/status, a message that does not name
  the file or value (or more than one line), or an answer that shows hosts, paths or tables;
* ``accepted_bad_input``: bad input was accepted.

The findings of issue 12 (all fixed, each with a unit test) group the probes: 1 ``data prepare
--output``, 2 store retention, 3 atomic Parquet commits, 4 damaged input, 5 ``limaml refresh``
stores, 6 the ranker HTTP service, 7 exposure (bind addresses, error bodies, gRPC limits).

The data tools are run as the real CLI (``python -m limaml.cli ...`` in a subprocess) on tiny
hand-made ML-100K / ML-1M folders; the stores, the ranker service (a toy model behind the
in-process TF Serving stand-in, as ``tests/serving_fixtures.py`` builds it) and the gRPC server
through their library functions. Bigtable probes use the real ``cbtemulator`` when it is
installed (else they are listed as skipped). Everything lives in a temporary folder that is
removed at the end; no network and no ``../shared`` data are needed.

Run from the repository root::

    python -m benchmarks.bad_day_probes [--json OUT.json] [--only ID-PREFIX ...]
"""
from __future__ import annotations

import argparse
import dataclasses
import gzip
import hashlib
import http.client
import io
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

REPO = Path(__file__).resolve().parents[1]

PASS = "pass"
LOST = "lost_data"
CORRUPTED = "corrupted"
TRACEBACK = "traceback"
HANG = "hang"
WRONG = "wrong_error"
ACCEPTED = "accepted_bad_input"
FAILURES = (LOST, CORRUPTED, TRACEBACK, HANG, WRONG, ACCEPTED)
# Rows that are not probes: covered by a named unit test instead, or not runnable here.
COVERED = "covered"
SKIPPED = "skipped"

Outcome = Tuple[str, str]  # (verdict, what was observed)


class Skip(Exception):
    """The probe cannot run here (e.g. no Bigtable emulator installed)."""


# ============================================================================== the harness
@dataclasses.dataclass(frozen=True)
class Probe:
    """One probe.

    Attributes:
        id: short unique id (``F4-ts-1e20``).
        finding: the issue-12 finding it re-checks (1-7).
        action: what is done.
        expected: the expected behaviour.
        fn: ``fn(workspace, folder) -> (verdict, observed)``; ``folder`` is a fresh empty
            folder of this probe.
        timeout_s: the probe is a ``hang`` when ``fn`` has not returned by then.
        covered_by: for rows that are not probes: the unit test that covers the finding.
    """

    id: str
    finding: int
    action: str
    expected: str
    fn: Optional[Callable[["Workspace", Path], Outcome]] = None
    timeout_s: float = 60.0
    covered_by: str = ""


@dataclasses.dataclass
class Row:
    """One line of the table."""

    id: str
    finding: int
    action: str
    expected: str
    observed: str
    verdict: str
    seconds: float


PROBES: List[Probe] = []


def probe(probe_id: str, finding: int, action: str, expected: str, timeout_s: float = 60.0):
    """Registers the decorated ``fn(workspace, folder) -> Outcome`` as a probe."""
    def register(fn: Callable[["Workspace", Path], Outcome]) -> Callable[["Workspace", Path], Outcome]:
        PROBES.append(Probe(probe_id, finding, action, expected, fn, timeout_s))
        return fn
    return register


def run_probe(p: Probe, ws: "Workspace") -> Row:
    """Runs one probe in a daemon thread; a probe that does not return within its timeout is a hang.

    Exceptions escaping the probe are ``wrong_error`` (an unexpected error of the code under
    test, or of the probe itself: the observed text says which exception).
    """
    if p.fn is None:
        return Row(p.id, p.finding, p.action, p.expected, f"covered by {p.covered_by}", COVERED, 0.0)
    folder = ws.root / "probes" / re.sub(r"[^A-Za-z0-9_.-]", "_", p.id)
    folder.mkdir(parents=True)
    box: Dict[str, Any] = {}

    def target() -> None:
        try:
            box["out"] = p.fn(ws, folder)
        except Skip as exc:
            box["out"] = (SKIPPED, str(exc))
        except BaseException as exc:  # noqa: BLE001 - every escape is a verdict
            box["out"] = (WRONG, f"unexpected {type(exc).__name__}: {exc}")

    t0 = time.monotonic()
    thread = threading.Thread(target=target, name=f"probe-{p.id}", daemon=True)
    thread.start()
    thread.join(p.timeout_s)
    seconds = time.monotonic() - t0
    if thread.is_alive():
        verdict, observed = HANG, f"no result within {p.timeout_s:g} s (abandoned)"
    else:
        verdict, observed = box["out"]
    return Row(p.id, p.finding, p.action, p.expected, ws.scrub(observed), verdict, seconds)


def run_probes(probes: Sequence[Probe], ws: "Workspace", log: Optional[Callable[[str], None]] = None
               ) -> List[Row]:
    """Runs ``probes`` one after the other (``log`` gets one progress line per probe)."""
    rows = []
    for p in probes:
        row = run_probe(p, ws)
        rows.append(row)
        if log:
            log(f"[probe] {row.id:<34} {row.verdict:<18} {row.seconds:6.1f} s")
    return rows


# ------------------------------------------------------------------------------ workspace
class Workspace:
    """A temporary folder for every probe plus the shared, lazily started servers.

    Args:
        root: the folder (created); removed by :meth:`close`.
    """

    def __init__(self, root: Optional[Path] = None) -> None:
        self.root = Path(root or tempfile.mkdtemp(prefix="bad-day-probes-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.cache = self.root / "limaml-cache"  # LIMAML_CACHE of the CLI runs (their log files)
        self._lock = threading.Lock()
        self._serving: Any = None
        self._emulator: Any = None
        self._closers: List[Callable[[], None]] = []

    def scrub(self, text: str) -> str:
        """``text`` with paths relative to the probe's folder, or to ``$TMP`` (readable table cells)."""
        text = text.replace(str(self.root.resolve()), "$TMP").replace(str(self.root), "$TMP")
        return re.sub(r"\$TMP/probes/[^/\s]+/", "", text)

    def serving(self) -> "ServingKit":
        """The toy model, its model server, the in-memory store, the ranker and its service."""
        with self._lock:
            if isinstance(self._serving, BaseException):
                raise Skip(f"serving setup failed earlier: {self._serving}")
            if self._serving is None:
                try:
                    self._serving = ServingKit(self.root / "serving")
                except BaseException as exc:
                    self._serving = exc
                    raise
                self._closers.append(self._serving.close)
            return self._serving

    def emulator(self) -> Any:
        """The real Bigtable emulator (started once); :class:`Skip` when it is not installed."""
        with self._lock:
            if isinstance(self._emulator, BaseException):
                raise Skip(f"no Bigtable emulator: {self._emulator}")
            if self._emulator is None:
                from embeddings.emulator import BigtableEmulator, EmulatorNotFoundError

                try:
                    emu = BigtableEmulator(set_env=False)
                    emu.start()
                except EmulatorNotFoundError as exc:
                    self._emulator = exc
                    raise Skip(f"no Bigtable emulator: {exc}") from None
                self._emulator = emu
                self._closers.append(emu.stop)
            return self._emulator

    def close(self) -> None:
        """Stops the servers and removes the folder."""
        for close in reversed(self._closers):
            try:
                close()
            except Exception:  # noqa: BLE001 - best effort at exit
                pass
        for path in self.root.rglob("*"):  # make chmod-ed files removable again
            try:
                if not path.is_symlink() and path.is_dir():
                    path.chmod(0o755)
                elif not path.is_symlink() and path.is_file():
                    path.chmod(0o644)
            except OSError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)


# ------------------------------------------------------------------------------ file snapshots
def snapshot(path: Path) -> Dict[str, str]:
    """Every entry under ``path`` (``path`` itself included, as ``.``): relative path -> digest.

    Files are digested by SHA-256, symbolic links by their target (never followed), folders as
    ``dir``; FIFOs and other special files are never opened (``special``).
    """
    out: Dict[str, str] = {}

    def visit(p: Path, rel: str) -> None:
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(st.st_mode):
            out[rel] = "link:" + os.readlink(p)
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = "dir"
            try:
                children = sorted(os.listdir(p))
            except OSError:
                children = []
            for child in children:
                visit(p / child, child if rel == "." else f"{rel}/{child}")
        elif stat.S_ISREG(st.st_mode):
            try:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            except OSError:
                out[rel] = f"unreadable:{st.st_size}:{st.st_mtime_ns}"
        else:
            out[rel] = "special"

    visit(Path(path), ".")
    return out


def compare_snapshots(path: Path, before: Dict[str, str], after: Dict[str, str]) -> Optional[Outcome]:
    """``lost_data`` when entries disappeared, ``corrupted`` when some changed or appeared; else None."""
    missing = sorted(set(before) - set(after))
    if missing:
        return LOST, f"{path}: {len(missing)} entries gone, e.g. {missing[:3]}"
    changed = sorted(k for k in before if before[k] != after[k])
    added = sorted(set(after) - set(before))
    if changed or added:
        return CORRUPTED, f"{path}: changed {changed[:3]}, added {added[:3]}"
    return None


def temp_litter(folder: Path) -> List[str]:
    """Temporary folders ``data prepare`` leaves beside its output when it fails midway."""
    try:
        return sorted(n for n in os.listdir(folder) if n.startswith((".prepare-", ".old-")))
    except OSError:
        return []


# ------------------------------------------------------------------------------ CLI probes
@dataclasses.dataclass
class CliRun:
    """One finished (or killed) command."""

    rc: Optional[int]
    stdout: str
    stderr: str
    timed_out: bool
    seconds: float


def limaml_cmd(*args: str) -> List[str]:
    """The real CLI: ``python -m limaml.cli ARGS``."""
    return [sys.executable, "-m", "limaml.cli", *args]


def run_command(cmd: Sequence[str], ws: Workspace, cwd: Optional[Path] = None, timeout_s: float = 60.0,
                env: Optional[Dict[str, str]] = None) -> CliRun:
    """Runs ``cmd`` in its own process group; kills that group (by its id) after ``timeout_s``."""
    full_env = dict(os.environ, PYTHONPATH=str(REPO), LIMAML_CACHE=str(ws.cache),
                    PYTHONWARNINGS="ignore", TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
    t0 = time.monotonic()
    proc = subprocess.Popen(list(cmd), cwd=str(cwd or REPO), env=full_env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            errors="replace", start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
        return CliRun(proc.returncode, out, err, False, time.monotonic() - t0)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = proc.communicate()
        return CliRun(None, out, err, True, time.monotonic() - t0)


@dataclasses.dataclass
class CliExpect:
    """What a CLI probe expects.

    Attributes:
        ok: True: exit code 0; False: a refusal (non-zero exit code, no traceback, exactly one
            error line holding every string of ``message``); None: either, as long as nothing
            protected changes.
        message: substrings (case-insensitive) of the one error line.
        protect: files or folders that must come out byte-identical.
        absent: paths that must not exist afterwards (no half-written output).
        litter: folders where no ``.prepare-*`` / ``.old-*`` temp folder may be left.
        check: on success, returns a problem (``corrupted``) or None.
    """

    ok: Optional[bool] = False
    message: Sequence[str] = ()
    protect: Sequence[Path] = ()
    absent: Sequence[Path] = ()
    litter: Sequence[Path] = ()
    check: Optional[Callable[[], Optional[str]]] = None


def error_lines(stderr: str) -> List[str]:
    """The CLI's error lines: standard error without blank lines and the library-log notice."""
    return [line for line in stderr.splitlines()
            if line.strip() and not line.startswith("[limaml] library warnings")]


def classify_cli(run: CliRun, expect: CliExpect, before: Dict[Path, Dict[str, str]]) -> Outcome:
    """The verdict of one CLI run (``before``: snapshots of ``expect.protect`` taken before it).

    Order: lost data, corrupted data (protected paths, half-written outputs, litter), hang,
    traceback, then the exit code and message.
    """
    for path, snap in before.items():
        problem = compare_snapshots(path, snap, snapshot(path))
        if problem:
            return problem
    lines = error_lines(run.stderr)
    first = lines[0][:160] if lines else "(nothing on stderr)"
    if run.timed_out:
        return HANG, f"killed after {run.seconds:.0f} s; stderr: {first}"
    if "Traceback" in run.stderr:
        last = lines[-1][:160] if lines else ""
        return TRACEBACK, f"rc={run.rc}: {last}"
    if run.rc != 0:
        leftovers = [str(p) for p in expect.absent if os.path.lexists(p)]
        if leftovers:
            return CORRUPTED, f"rc={run.rc} but half-written output left: {leftovers}"
    for folder in expect.litter:
        if temp_litter(folder):
            return CORRUPTED, f"rc={run.rc}, temp folders left in {folder}: {temp_litter(folder)}"
    if run.rc == 0:
        if expect.ok is False:
            return ACCEPTED, "rc=0: accepted" + (f" ({expect.check()})" if expect.check else "")
        problem = expect.check() if expect.check else None
        if problem:
            return CORRUPTED, f"rc=0 but {problem}"
        return PASS, "rc=0" + (f"; {run.stdout.splitlines()[0][:100]}" if run.stdout.strip() else "")
    if expect.ok is True:
        return WRONG, f"rc={run.rc}: {first}"
    missing = [m for m in expect.message if m.lower() not in lines[0].lower()]
    if len(lines) != 1 or missing:
        why = f"{len(lines)} error lines" if len(lines) != 1 else f"message lacks {missing}"
        return WRONG, f"rc={run.rc}, {why}: {first}"
    return PASS, f"rc={run.rc}: {first}"


def cli_probe(cmd: Sequence[str], expect: CliExpect, ws: Workspace, cwd: Optional[Path] = None,
              timeout_s: float = 60.0, env: Optional[Dict[str, str]] = None) -> Outcome:
    """Snapshots ``expect.protect``, runs ``cmd`` and classifies the result (:func:`classify_cli`)."""
    before = {Path(p): snapshot(Path(p)) for p in expect.protect}
    run = run_command(cmd, ws, cwd=cwd, timeout_s=timeout_s, env=env)
    return classify_cli(run, expect, before)


# ============================================================================== inputs
def write_ml100k(folder: Path) -> Path:
    """The hand-made 12-rating ML-100K folder of ``tests/movielens_tiny.py``."""
    from tests import movielens_tiny

    return Path(movielens_tiny.write_ml100k(str(folder)))


ML1M_RATINGS = [f"{u}::{i}::{4 if (u + i) % 2 else 2}::{978300760 + 10 * u + i}"
                for u in (1, 2, 3) for i in (1, 2, 3)]
ML1M_USERS = ["1::F::1::10::48067", "2::M::56::16::70072", "3::M::25::15::55117"]
ML1M_MOVIES = ["1::Toy Story (1995)::Animation|Children's|Comedy", "2::Jumanji (1995)::Adventure",
               "3::Heat (1995)::Action|Crime|Thriller"]


def write_ml1m(folder: Path) -> Path:
    """A 9-rating ML-1M folder (``ratings.dat.gz``, ``users.dat``, ``movies.dat``)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.dat.gz").write_bytes(ml1m_gzip())
    (folder / "users.dat").write_text("\n".join(ML1M_USERS) + "\n", encoding="latin-1")
    (folder / "movies.dat").write_text("\n".join(ML1M_MOVIES) + "\n", encoding="latin-1")
    return folder


def ml1m_gzip() -> bytes:
    """The tiny ML-1M ratings, gzip-compressed."""
    return gzip.compress(("\n".join(ML1M_RATINGS) + "\n").encode("ascii"), mtime=0)


def edit_line(path: Path, line_no: int, text: str) -> None:
    """Replaces line ``line_no`` (1-based) of ``path``."""
    lines = path.read_text(encoding="latin-1").split("\n")
    lines[line_no - 1] = text
    path.write_text("\n".join(lines), encoding="latin-1")


def prepared_rows(out: Path) -> int:
    """Rows of a prepared output (its Parquet file)."""
    from limaml.data import canonical

    return len(canonical.read_prepared(str(out)))


def prepare_in_process(src: Path, out: Path) -> None:
    """A first, successful ``data prepare`` run (setup of rerun probes), without a subprocess."""
    from limaml.data import prepare

    prepare.prepare("movielens-100k", str(out), source=str(src), out=io.StringIO())


# ============================================================================== finding 1
def _prepare_args(src: Any, out: Any, dataset: str = "movielens-100k") -> List[str]:
    return limaml_cmd("data", "prepare", dataset, "--source", str(src), "--output", str(out))


NOT_OURS = ("holds files that limaml data prepare did not write", "nothing was deleted")


@probe("F1-output-is-source", 1, "`data prepare --output SRC` (the source dataset folder)",
       "exit 2, one line naming SRC; source files unchanged")
def _p_output_is_source(ws: Workspace, d: Path) -> Outcome:
    src = write_ml100k(d / "ml100k")
    return cli_probe(_prepare_args(src, src), CliExpect(message=NOT_OURS, protect=[d]), ws)


@probe("F1-output-is-source-dot", 1, "`--output SRC/.` (the source folder, spelled with /.)",
       "refused; source unchanged")
def _p_output_is_source_dot(ws: Workspace, d: Path) -> Outcome:
    src = write_ml100k(d / "ml100k")
    return cli_probe(_prepare_args(src, f"{src}/."), CliExpect(message=NOT_OURS, protect=[d]), ws)


@probe("F1-output-is-source-relative", 1, "run inside SRC: `--source . --output .`",
       "refused; source unchanged")
def _p_output_relative(ws: Workspace, d: Path) -> Outcome:
    src = write_ml100k(d / "ml100k")
    return cli_probe(_prepare_args(".", "."), CliExpect(message=NOT_OURS, protect=[d]), ws, cwd=src)


@probe("F1-output-is-parent", 1, "`--output` = the folder that holds the source folder",
       "refused; nothing deleted")
def _p_output_parent(ws: Workspace, d: Path) -> Outcome:
    src = write_ml100k(d / "ml100k")
    return cli_probe(_prepare_args(src, d), CliExpect(message=NOT_OURS, protect=[d]), ws)


@probe("F1-output-is-input-file", 1, "`--output SRC/u.data` (an input file)",
       "refused (existing file); u.data unchanged")
def _p_output_input_file(ws: Workspace, d: Path) -> Outcome:
    src = write_ml100k(d / "ml100k")
    return cli_probe(_prepare_args(src, src / "u.data"),
                     CliExpect(message=("is an existing file",), protect=[d]), ws)


@probe("F1-output-is-file", 1, "`--output notes.txt` (a user's file)", "refused; file unchanged")
def _p_output_file(ws: Workspace, d: Path) -> Outcome:
    src = write_ml100k(d / "ml100k")
    (d / "notes.txt").write_text("my notes\n")
    return cli_probe(_prepare_args(src, d / "notes.txt"),
                     CliExpect(message=("is an existing file",), protect=[d]), ws)


@probe("F1-output-foreign-folder", 1, "`--output` = a folder holding keep.txt",
       "refused; folder unchanged")
def _p_output_foreign(ws: Workspace, d: Path) -> Outcome:
    src = write_ml100k(d / "ml100k")
    (d / "out").mkdir()
    (d / "out" / "keep.txt").write_text("x")
    return cli_probe(_prepare_args(src, d / "out"), CliExpect(message=NOT_OURS, protect=[d]), ws)


@probe("F1-output-ours-plus-foreign", 1, "`--output` = a previous output plus thesis.tex",
       "refused; nothing deleted")
def _p_output_ours_plus(ws: Workspace, d: Path) -> Outcome:
    src = write_ml100k(d / "ml100k")
    prepare_in_process(src, d / "out")
    (d / "out" / "thesis.tex").write_text("\\begin{document}")
    return cli_probe(_prepare_args(src, d / "out"), CliExpect(message=NOT_OURS, protect=[d]), ws)


@probe("F1-output-foreign-manifest", 1, "`--output` = folder with someone else's manifest.json + interactions/",
       "refused; nothing deleted")
def _p_output_foreign_manifest(ws: Workspace, d: Path) -> Outcome:
    src = write_ml100k(d / "ml100k")
    (d / "out" / "interactions").mkdir(parents=True)
    (d / "out" / "manifest.json").write_text('{"name": "npm"}')
    return cli_probe(_prepare_args(src, d / "out"), CliExpect(message=NOT_OURS, protect=[d]), ws)


@probe("F1-output-symlink", 1, "`--output LINK` where LINK -> a folder with data.csv",
       "refused (symbolic link); link and target unchanged")
def _p_output_symlink(ws: Workspace, d: Path) -> Outcome:
    src = write_ml100k(d / "ml100k")
    (d / "elsewhere").mkdir()
    (d / "elsewhere" / "data.csv").write_text("a,b\n")
    os.symlink(d / "elsewhere", d / "out")
    return cli_probe(_prepare_args(src, d / "out"),
                     CliExpect(message=("is a symbolic link",), protect=[d]), ws)


@probe("F1-output-symlink-slash", 1, "`--output LINK/` (trailing slash: resolves through the link)",
       "refused; target folder unchanged")
def _p_output_symlink_slash(ws: Workspace, d: Path) -> Outcome:
    src = write_ml100k(d / "ml100k")
    (d / "elsewhere").mkdir()
    (d / "elsewhere" / "data.csv").write_text("a,b\n")
    os.symlink(d / "elsewhere", d / "out")
    return cli_probe(_prepare_args(src, f"{d / 'out'}/"), CliExpect(message=("output",), protect=[d]), ws)


@probe("F1-output-linked-interactions", 1,
       "rerun into a previous output whose interactions/ is a symlink to a user's folder",
       "the user's folder behind the link survives (refused or replaced)")
def _p_output_linked_interactions(ws: Workspace, d: Path) -> Outcome:
    src = write_ml100k(d / "ml100k")
    out = d / "out"
    prepare_in_process(src, out)
    mine = d / "mine"
    shutil.move(str(out / "interactions"), str(mine))  # the user's data.parquet, now elsewhere
    os.symlink(mine, out / "interactions")
    return cli_probe(_prepare_args(src, out), CliExpect(ok=None, protect=[mine, src], litter=[d]), ws)


@probe("F1-parent-is-file", 1, "`--output plain-file/out` (its parent is a file)",
       "exit 2, one line: plain-file is a file, not a folder; no traceback")
def _p_parent_is_file(ws: Workspace, d: Path) -> Outcome:
    src = write_ml100k(d / "ml100k")
    (d / "plain-file").write_text("x")
    return cli_probe(_prepare_args(src, d / "plain-file" / "out"),
                     CliExpect(message=("plain-file is a file, not a folder",), protect=[d]), ws)


@probe("F1-empty-folder-ok", 1, "`--output` = an empty folder (control)", "exit 0, 12 rows written")
def _p_empty_ok(ws: Workspace, d: Path) -> Outcome:
    src = write_ml100k(d / "ml100k")
    (d / "out").mkdir()
    check = lambda: None if prepared_rows(d / "out") == 12 else f"{prepared_rows(d / 'out')} rows"  # noqa: E731
    return cli_probe(_prepare_args(src, d / "out"), CliExpect(ok=True, protect=[src], litter=[d], check=check), ws)


@probe("F1-rerun-replaces", 1, "rerun into its own previous output after u.data lost 2 rows (u.info says 10)",
       "exit 0; output replaced (10 rows), no temp folders left")
def _p_rerun_replaces(ws: Workspace, d: Path) -> Outcome:
    from tests import movielens_tiny

    src = write_ml100k(d / "ml100k")
    prepare_in_process(src, d / "out")
    (src / "u.data").write_text("\n".join(movielens_tiny.RATINGS[:10]) + "\n")
    (src / "u.info").write_text(movielens_tiny.info_text(ratings=10))
    check = lambda: None if prepared_rows(d / "out") == 10 else f"{prepared_rows(d / 'out')} rows, not 10"  # noqa: E731
    return cli_probe(_prepare_args(src, d / "out"), CliExpect(ok=True, protect=[src], litter=[d], check=check), ws)


@probe("F1-failed-rerun-keeps-output", 1, "rerun into a previous output with u.data line 5 rating 'five'",
       "exit 2 naming u.data line 5; previous output byte-identical; no temp folders")
def _p_failed_rerun(ws: Workspace, d: Path) -> Outcome:
    src = write_ml100k(d / "ml100k")
    prepare_in_process(src, d / "out")
    edit_line(src / "u.data", 5, "3\t2\tfive\t881250953")
    return cli_probe(_prepare_args(src, d / "out"),
                     CliExpect(message=("u.data, line 5, field 'rating'",), protect=[d / "out", src],
                               litter=[d]), ws)


# ============================================================================== finding 4
@dataclasses.dataclass(frozen=True)
class Damage:
    """A damaged-input probe of ``data prepare`` (new output folder; it must not appear).

    Attributes:
        id, action, expected: the table's columns.
        damage: edits the source folder (a fresh tiny dataset) before the run.
        message: substrings the one error line must hold (empty with ``ok``).
        ok: the damage is harmless and must be accepted (a control), checked by ``check``.
        dataset: ``movielens-100k`` or ``movielens-1m``.
        timeout_s: of the CLI run.
        env: extra environment of the CLI run (with ``{src}`` replaced by the source folder).
        prelude: run the CLI through this Python prelude (``python -c PRELUDE ARGS``).
    """

    id: str
    action: str
    expected: str
    damage: Callable[[Path], None]
    message: Tuple[str, ...] = ()
    ok: bool = False
    check: Optional[Callable[[Path], Optional[str]]] = None
    dataset: str = "movielens-100k"
    timeout_s: float = 60.0
    env: Optional[Dict[str, str]] = None
    prelude: Optional[str] = None


def _edit(name: str, line_no: int, text: str) -> Callable[[Path], None]:
    return lambda src: edit_line(src / name, line_no, text)


def _write(name: str, data: Any) -> Callable[[Path], None]:
    def damage(src: Path) -> None:
        (src / name).write_bytes(data if isinstance(data, bytes) else data.encode("latin-1"))
    return damage


def _replace(name: str, how: str) -> Callable[[Path], None]:
    """Replaces input file ``name`` by a directory, a self-loop link, a dangling link or a FIFO."""
    def damage(src: Path) -> None:
        target = src / name
        target.unlink()
        if how == "directory":
            target.mkdir()
        elif how == "loop":
            os.symlink(name, target)
        elif how == "dangling":
            os.symlink(src / "no-such-file", target)
        elif how == "fifo":
            os.mkfifo(target)
    return damage


def _utf16(src: Path) -> None:
    (src / "u.data").write_bytes((src / "u.data").read_text().encode("utf-16"))


def _crlf(src: Path) -> None:
    for name in ("u.data", "u.user", "u.item", "u.genre"):
        (src / name).write_bytes((src / name).read_bytes().replace(b"\n", b"\r\n"))


def _header_line(src: Path) -> None:
    (src / "u.data").write_text("user_id\titem_id\trating\ttimestamp\n" + (src / "u.data").read_text())


def _cut_rows(src: Path) -> None:
    from tests import movielens_tiny

    (src / "u.data").write_text("\n".join(movielens_tiny.RATINGS[:6]) + "\n")


def _cut_last_field(src: Path) -> None:
    from tests import movielens_tiny

    (src / "u.data").write_text("\n".join(movielens_tiny.RATINGS[:-1] + ["6\t3\t4\t8812"]))


def _info_users(src: Path) -> None:
    from tests import movielens_tiny

    (src / "u.info").write_text(movielens_tiny.info_text(users=7))


def _unreadable(src: Path) -> None:
    if os.geteuid() != 0:
        (src / "u.data").chmod(0)


def _no_source(src: Path) -> None:
    shutil.rmtree(src)


def _source_is_file(src: Path) -> None:
    data = (src / "u.data").read_bytes()
    shutil.rmtree(src)
    src.write_bytes(data)


def _gz_cut(src: Path) -> None:
    gz = ml1m_gzip()
    (src / "ratings.dat.gz").write_bytes(gz[: len(gz) // 2])


def _gz_flip(src: Path) -> None:
    gz = bytearray(ml1m_gzip())
    gz[15] ^= 0xFF  # inside the deflate stream, past the 10-byte gzip header
    (src / "ratings.dat.gz").write_bytes(bytes(gz))


def _check_crlf(out: Path) -> Optional[str]:
    from limaml.data import canonical
    from tests import movielens_tiny

    frame = canonical.read_prepared(str(out))
    want = sorted(int(r.split("\t")[3]) for r in movielens_tiny.RATINGS)
    got = sorted(int(t) for t in frame["timestamp"])
    return None if got == want else f"timestamps {got[:3]}... differ from the LF copy"


def _age_of_user3(out: Path) -> Optional[str]:
    from limaml.data import canonical

    frame = canonical.read_prepared(str(out))
    return f"user 3 stored with age bucket {sorted(set(frame.loc[frame['user_id'] == '3', 'age_bucket']))}"


def _check_rows(n: int) -> Callable[[Path], Optional[str]]:
    return lambda out: None if prepared_rows(out) == n else f"{prepared_rows(out)} rows, not {n}"


# Unreadable file when running as root (chmod 000 does not stop root): the real CLI, with every
# open() of that one path failing as the kernel would answer a non-root reader.
_UNREADABLE_PRELUDE = r"""
import builtins, os, runpy, sys
target = os.path.abspath(os.environ["PROBE_UNREADABLE"])
real_open = builtins.open
def guarded_open(name, *args, **kwargs):
    if isinstance(name, (str, bytes, os.PathLike)) and os.path.abspath(os.fsdecode(name)) == target:
        raise PermissionError(13, "Permission denied", os.fsdecode(name))
    return real_open(name, *args, **kwargs)
builtins.open = guarded_open
sys.argv = ["limaml"] + sys.argv[1:]
runpy.run_module("limaml.cli", run_name="__main__", alter_sys=True)
"""

DAMAGES: List[Damage] = [
    *[Damage(f"F4-ts-{v}", f"u.data line 4 timestamp `{v}`",
             "exit 2, one line: u.data, line 4, field 'timestamp' and the value",
             _edit("u.data", 4, f"2\t3\t1\t{v}"), ("u.data, line 4, field 'timestamp'", v))
      for v in ("1e20", "inf", "1e300", "-5", "nan", "9223372036854775808", "4102444801")],
    Damage("F4-empty-u.data", "empty u.data", "exit 2: u.data: no data rows", _write("u.data", b""),
           ("u.data: no data rows",)),
    Damage("F4-fewer-rows", "u.data cut to 6 whole rows (u.info declares 12)",
           "exit 2: u.data: 6 ratings where u.info declares 12", _cut_rows,
           ("u.data: 6 ratings where u.info declares 12",)),
    Damage("F4-cut-last-field", "u.data cut inside its last field (no final line break)",
           "exit 2: u.data, line 12: the last line has no line break", _cut_last_field,
           ("u.data, line 12: the last line has no line break",)),
    Damage("F4-fewer-users", "u.info declares 7 users, u.user holds 6",
           "exit 2: u.user: 6 users where u.info declares 7", _info_users,
           ("u.user: 6 users where u.info declares 7",)),
    Damage("F4-dir-u.user", "u.user is a directory", "exit 2, one line: u.user: is a directory",
           _replace("u.user", "directory"), ("u.user: is a directory",)),
    Damage("F4-loop-u.item", "u.item is a symlink to itself", "exit 2, one line: u.item: symbolic link loop",
           _replace("u.item", "loop"), ("u.item: symbolic link loop",)),
    Damage("F4-unreadable-u.data", "u.data unreadable (EACCES)", "exit 2, one line: u.data: permission denied",
           _unreadable, ("u.data: permission denied",),
           env={"PROBE_UNREADABLE": "{src}/u.data"}, prelude=_UNREADABLE_PRELUDE if os.geteuid() == 0 else None),
    Damage("F4-dangling-u.data", "u.data is a dangling symlink", "exit 2, one line: u.data: file not found",
           _replace("u.data", "dangling"), ("u.data: file not found",)),
    Damage("F4-fifo-u.data", "u.data is a named pipe (FIFO) nobody writes to",
           "exit 2, one line naming u.data (not a regular file); no hang",
           _replace("u.data", "fifo"), ("u.data",), timeout_s=15.0),
    Damage("F4-no-source", "--source names a folder that does not exist",
           "exit 2, one line: u.data: file not found", _no_source, ("u.data: file not found",)),
    Damage("F4-source-is-file", "--source names a file, not a folder", "exit 2, one line naming u.data",
           _source_is_file, ("u.data", "not a directory")),
    Damage("F4-dup-rating", "u.data line 5 repeats line 1", "exit 2: u.data, line 5: duplicated rating",
           _edit("u.data", 5, "1\t1\t5\t881250949"), ("u.data, line 5", "duplicated rating")),
    Damage("F4-dup-user", "u.user line 5 reuses user 2", "exit 2: u.user, line 5: duplicated user",
           _edit("u.user", 5, "2|33|F|other|15213"), ("u.user, line 5", "duplicated user")),
    Damage("F4-dup-item", "u.item line 3 reuses item 1", "exit 2: u.item, line 3: duplicated item",
           _edit("u.item", 3, "1|Four Rooms (1995)|01-Jan-1995||http://x/3|0|1|1"),
           ("u.item, line 3", "duplicated item")),
    Damage("F4-rating-nan", "u.data line 3 rating `nan`", "exit 2: u.data, line 3, field 'rating'",
           _edit("u.data", 3, "2\t1\tnan\t881250951"), ("u.data, line 3, field 'rating'",)),
    Damage("F4-rating-6", "u.data line 3 rating `6` (scale is 0.5-5)", "exit 2: u.data, line 3, field 'rating'",
           _edit("u.data", 3, "2\t1\t6\t881250951"), ("u.data, line 3, field 'rating'",)),
    Damage("F4-unknown-item", "u.data line 2 rates item 99 (not in u.item)",
           "exit 2: u.data, line 2, field 'item_id', '99'",
           _edit("u.data", 2, "1\t99\t3\t881250950"), ("u.data, line 2, field 'item_id'", "'99'")),
    Damage("F4-utf16", "u.data re-saved as UTF-16", "exit 2: u.data: unsupported encoding", _utf16,
           ("u.data", "unsupported encoding")),
    Damage("F4-header-line", "u.data gains a header line", "exit 2: u.data, line 1, field 'rating'",
           _header_line, ("u.data, line 1, field 'rating'",)),
    Damage("F4-genre-index", "u.genre line 2 `Action|x` (index not a number)",
           "exit 2, one line naming u.genre and line 2", _edit("u.genre", 2, "Action|x"),
           ("u.genre", "line 2")),
    Damage("F4-age-negative", "u.user line 3 age `-5`", "exit 2, one line: u.user, line 3, field 'age'",
           _edit("u.user", 3, "3|-5|M|writer|32067"), ("u.user, line 3", "age"), check=_age_of_user3),
    Damage("F4-crlf-ok", "every file with CRLF line endings (control)", "exit 0; the same 12 rows and timestamps",
           _crlf, ok=True, check=_check_crlf),
    Damage("F4-ml1m-ok", "ML-1M folder, 9 ratings in ratings.dat.gz (control)", "exit 0; 9 rows",
           lambda src: None, ok=True, check=_check_rows(9), dataset="movielens-1m"),
    Damage("F4-ml1m-gz-cut", "ML-1M ratings.dat.gz cut in half", "exit 2, one line: ratings.dat.gz ... ends early",
           _gz_cut, ("ratings.dat.gz", "ends early"), dataset="movielens-1m"),
    Damage("F4-ml1m-gz-corrupt", "ML-1M ratings.dat.gz with one flipped byte in the deflate stream",
           "exit 2, one line naming ratings.dat.gz", _gz_flip, ("ratings.dat.gz",), dataset="movielens-1m"),
    Damage("F4-ml1m-age-code", "ML-1M users.dat line 2 age code 57 (not an ML-1M code)",
           "exit 2: users.dat, line 2, field 'age'", _edit("users.dat", 2, "2::M::57::16::70072"),
           ("users.dat, line 2, field 'age'",), dataset="movielens-1m"),
]


def damage_probe(spec: Damage) -> Probe:
    """The probe of one :class:`Damage`: a fresh dataset, damaged, prepared into a new folder."""
    def fn(ws: Workspace, d: Path) -> Outcome:
        src = (write_ml1m if spec.dataset == "movielens-1m" else write_ml100k)(d / "src")
        out = d / "out"
        spec.damage(src)
        cmd = _prepare_args(src, out, spec.dataset)
        if spec.prelude:
            cmd = [sys.executable, "-c", spec.prelude, *cmd[3:]]
        env = {k: v.replace("{src}", str(src)) for k, v in (spec.env or {}).items()}
        check = (lambda: spec.check(out)) if spec.check else None
        expect = CliExpect(ok=True if spec.ok else False, message=spec.message,
                           protect=[src] if os.path.lexists(src) else [],
                           absent=[] if spec.ok else [out], litter=[d], check=check)
        return cli_probe(cmd, expect, ws, timeout_s=spec.timeout_s, env=env)

    return Probe(spec.id, 4, spec.action, spec.expected, fn, timeout_s=spec.timeout_s + 30)


PROBES.extend(damage_probe(spec) for spec in DAMAGES)


# ============================================================================== findings 2 and 3
E = 4
USERS = np.array([f"user-{i}" for i in range(30)], dtype=object)


def vectors(run: int) -> np.ndarray:
    """Known float32 [30, E] vectors of one run: user i, coordinate j -> run * 100 + i + j / 8."""
    return (run * 100 + np.arange(30)[:, None] + np.arange(E)[None, :] / 8).astype(np.float32)


def batches(version: str, run: int) -> Iterator[Any]:
    """One complete MEG output of ``run`` under ``version`` (users + cold-start row)."""
    from embeddings.record import EmbeddingBatch

    yield EmbeddingBatch.create(USERS, vectors(run), version, 1000 + run)
    yield EmbeddingBatch.cold_start(np.zeros(E, np.float32), version, 1000 + run)


def _stores(ws: Workspace, kind: str, d: Path, keep: int) -> Tuple[Any, Callable[[], Any]]:
    """(writer store, factory of a fresh reader of the same store) of ``kind``."""
    if kind == "parquet":
        from embeddings.parquet_store import ParquetEmbeddingStore

        root = d / "store"
        return (ParquetEmbeddingStore(root, keep_versions=keep, fsync=False),
                lambda: ParquetEmbeddingStore(root))
    from embeddings.bigtable_store import BigtableEmbeddingStore

    client = ws.emulator().client()
    table_id = f"probe-{uuid.uuid4().hex[:8]}"
    return (BigtableEmbeddingStore(client.instance("limaml").table(table_id), keep_versions=keep,
                                   mutation_chunk_rows=20),
            lambda: BigtableEmbeddingStore(client.instance("limaml").table(table_id), pointer_ttl_s=0.0))


def served_exactly(reader: Any, version: str, run: int) -> Optional[Outcome]:
    """None when ``reader`` serves ``version`` with ``run``'s exact vectors for every user."""
    from embeddings.record import VersionNotCommittedError

    try:
        res = reader.lookup(USERS, version)
    except VersionNotCommittedError:
        return LOST, f"version {version} retired; committed {reader.committed_versions()}"
    if not np.asarray(res.found).all():
        return LOST, f"version {version}: {int((~np.asarray(res.found)).sum())} users gone"
    if not np.array_equal(res.embeddings, vectors(run)):
        return CORRUPTED, f"version {version}: vectors differ from the ones written"
    return None


def _served_survives(kind: str) -> Callable[[Workspace, Path], Outcome]:
    def fn(ws: Workspace, d: Path) -> Outcome:
        store, reader = _stores(ws, kind, d, keep=3)
        store.write(batches("1", 1))
        store.mark_pushed("1")  # blessed and pushed: served
        for run in (2, 3, 4):  # three runs whose models are not blessed
            store.write(batches(str(run), run))
        fresh = reader()
        problem = served_exactly(fresh, "1", 1)
        committed = fresh.committed_versions()
        return problem or (PASS, f"served 1 exact; committed {committed}")
    return fn


def _rollback_kept(kind: str) -> Callable[[Workspace, Path], Outcome]:
    def fn(ws: Workspace, d: Path) -> Outcome:
        store, reader = _stores(ws, kind, d, keep=3)
        for v in ("1", "2"):
            store.write(batches(v, int(v)))
            store.mark_pushed(v)  # serving 2, rollback target 1
        store.write(batches("3", 3))
        store.write(batches("4", 4))
        store.mark_pushed("4")  # serving 4, rollback 2
        store.write(batches("5", 5))
        fresh = reader()
        for v in ("4", "2", "5"):
            problem = served_exactly(fresh, v, int(v))
            if problem:
                return problem
        return PASS, f"serving 4, rollback 2 and newest 5 exact; committed {fresh.committed_versions()}"
    return fn


for _kind in ("parquet", "bigtable"):
    PROBES.append(Probe(f"F2-{_kind}-served-survives", 2,
                        f"{_kind}: keep 3; v1 pushed, then 3 unblessed runs (v2-v4)",
                        "v1 still served with its exact vectors", _served_survives(_kind), 60.0))
    PROBES.append(Probe(f"F2-{_kind}-rollback-kept", 2,
                        f"{_kind}: keep 3; push 1, 2; unblessed 3; push 4; write 5",
                        "serving 4, rollback 2, newest 5 readable and exact", _rollback_kept(_kind), 60.0))


@probe("F2-parquet-keep1-served", 2, "parquet: keep 1; v1 pushed, then unblessed v2, v3",
       "v1 (served) and v3 (newest) kept, v1 exact")
def _p_keep1(ws: Workspace, d: Path) -> Outcome:
    store, reader = _stores(ws, "parquet", d, keep=1)
    store.write(batches("1", 1))
    store.mark_pushed("1")
    store.write(batches("2", 2))
    store.write(batches("3", 3))
    fresh = reader()
    return (served_exactly(fresh, "1", 1) or served_exactly(fresh, "3", 3)
            or (PASS, f"committed {fresh.committed_versions()}"))


def _attempt_positions(store: Any, version: str) -> Dict[Tuple[bytes, str], int]:
    """Per Bigtable row and family: position of the committed attempt's cell, newest first."""
    from embeddings import bigtable_store as bts

    ts = int(store.version_info(version)["attempt_ts_us"])
    q = version.encode("ascii")
    out = {}
    for r in store.table.read_rows():
        if r.row_key.startswith(b"__meta__#") and r.row_key != bts.COLD_START_ROW_KEY:
            continue
        for fam in (bts.EMB_FAMILY, bts.META_FAMILY):
            stamps = sorted((c.timestamp_micros for c in r.cells.get(fam, {}).get(q, ())), reverse=True)
            if ts in stamps:
                out[(r.row_key, fam)] = stamps.index(ts)
    return out


@probe("F2-bigtable-killed-rewrites", 2, "bigtable: v7 committed, then 3 rewrites of v7 killed after all rows",
       "committed cells stay inside the GC window; v7 served exact")
def _p_bt_killed(ws: Workspace, d: Path) -> Outcome:
    from embeddings.bigtable_store import BigtableEmbeddingStore
    from embeddings.record import EmbeddingBatch

    table = ws.emulator().client().instance("limaml").table(f"gc-{uuid.uuid4().hex[:8]}")
    store = BigtableEmbeddingStore(table, keep_versions=3, mutation_chunk_rows=10)
    store.write(batches("7", 1))

    def killed(run: int) -> Iterator[Any]:
        yield EmbeddingBatch.create(USERS, vectors(run), "7", 2000 + run)
        raise RuntimeError("writer killed")

    for run in (2, 3, 4):
        try:
            store.write(killed(run))
        except RuntimeError:
            pass
    window = store.gc_rule().max_num_versions
    outside = {k: p for k, p in _attempt_positions(store, "7").items() if p >= window}
    if outside:
        return LOST, f"{len(outside)} committed cells outside the newest-{window} GC window"
    return served_exactly(store, "7", 1) or (PASS, f"all committed cells within the newest {window}")


@probe("F2-bigtable-stale-pointer", 2, "bigtable: reader caches the pointer for 1 h; writer (keep 1) retires v1",
       "lookup of v1 raises VersionNotCommittedError (503), never serves known users cold")
def _p_bt_pointer(ws: Workspace, d: Path) -> Outcome:
    from embeddings.bigtable_store import BigtableEmbeddingStore
    from embeddings.record import VersionNotCommittedError
    from serving.embedding_lookup import EmbeddingLookup

    client = ws.emulator().client()
    table_id = f"ro-{uuid.uuid4().hex[:8]}"
    writer = BigtableEmbeddingStore(client.instance("limaml").table(table_id), keep_versions=1)
    writer.write(batches("1", 1))
    reader = BigtableEmbeddingStore(client.instance("limaml").table(table_id), pointer_ttl_s=3600)
    reader.lookup(USERS[:3], "1")
    writer.write(batches("2", 2))
    with EmbeddingLookup(reader, embedding_dim=E, timeout_s=5.0) as lookup:
        try:
            res = lookup.lookup(USERS[3:], "1")
        except VersionNotCommittedError as exc:
            return PASS, f"VersionNotCommittedError: {str(exc)[:80]}"
    return CORRUPTED, f"answered: {int(np.asarray(res.cold).sum())} known users served cold, degraded={res.degraded}"


def _stream(ids: np.ndarray, emb: np.ndarray, version: str, fail_after: Optional[int] = None) -> Iterator[Any]:
    from embeddings.record import EmbeddingBatch

    for k, i in enumerate(range(0, len(ids), 20)):
        if fail_after is not None and k == fail_after:
            raise RuntimeError("injected failure half-way")
        yield EmbeddingBatch.create(ids[i:i + 20], emb[i:i + 20], version, 1000)
    yield EmbeddingBatch.cold_start(np.full(emb.shape[1], 0.25, np.float32), version, 1000)


@probe("F3-parquet-failed-writes", 3, "parquet: v1 committed; a rerun of v1 and a new v2 both fail half-way",
       "v1 exact, v2 invisible, no .tmp-* folder left")
def _p_failed_writes(ws: Workspace, d: Path) -> Outcome:
    from embeddings.parquet_store import ParquetEmbeddingStore
    from embeddings.record import VersionNotCommittedError

    root = d / "store"
    store = ParquetEmbeddingStore(root, rows_per_file=10, fsync=False)
    store.write(_stream(USERS, vectors(1), "1"))
    for version, run in (("1", 5), ("2", 7)):
        try:
            store.write(_stream(USERS, vectors(run), version, fail_after=1))
        except RuntimeError:
            pass
    fresh = ParquetEmbeddingStore(root)
    problem = served_exactly(fresh, "1", 1)
    if problem:
        return problem
    try:
        fresh.lookup(USERS, "2")
        return CORRUPTED, "the failed v2 is visible"
    except VersionNotCommittedError:
        pass
    litter = [p.name for p in root.iterdir() if p.name.startswith((".tmp-", ".trash-"))]
    return (CORRUPTED, f"temp folders left: {litter}") if litter else (PASS, f"entries {sorted(os.listdir(root))}")


_KILLED_WRITER = r"""
import sys, time, numpy as np
from pathlib import Path
from embeddings.parquet_store import ParquetEmbeddingStore
from embeddings.record import EmbeddingBatch
root, marker = sys.argv[1], Path(sys.argv[2])
def gen():
    for i in range(100):
        yield EmbeddingBatch.create([f"u{i}-{j}" for j in range(50)], np.full((50, 4), 9.0, np.float32), "2", 5)
        if i == 3:
            marker.write_text("half-way")
            time.sleep(60)  # the parent SIGKILLs us here
ParquetEmbeddingStore(root, rows_per_file=60).write(gen())
"""


def _kill_writer_half_way(root: Path, d: Path) -> List[Path]:
    """Runs a writer of v2 into ``root`` and SIGKILLs it half-way; returns its ``.tmp-*`` folders."""
    from tests.killed_writer import kill_at_marker

    kill_at_marker(_KILLED_WRITER, [root, d / "marker"], d / "marker", timeout_s=60.0)
    return [p for p in root.iterdir() if p.name.startswith(".tmp-")]


@probe("F3-parquet-sigkill", 3, "parquet: v1 committed; a writer of v2 is SIGKILLed half-way; a later write",
       "v2 invisible, v1 exact; the next write removes the (aged) crashed .tmp-* folder", timeout_s=120)
def _p_sigkill(ws: Workspace, d: Path) -> Outcome:
    from embeddings.parquet_store import ParquetEmbeddingStore

    root = d / "store"
    ParquetEmbeddingStore(root, fsync=False).write(batches("1", 1))
    crashed = _kill_writer_half_way(root, d)
    fresh = ParquetEmbeddingStore(root)
    if fresh.committed_versions() != ["1"]:
        return CORRUPTED, f"after the kill: committed {fresh.committed_versions()}"
    problem = served_exactly(fresh, "1", 1)
    if problem:
        return problem
    old = time.time() - 2 * 3600
    for p in crashed:
        os.utime(p, (old, old))
    ParquetEmbeddingStore(root, fsync=False).write(batches("3", 3))
    left = [p.name for p in crashed if os.path.lexists(p)]
    if left:
        return CORRUPTED, f"the crashed writer's temp folder survived the next write: {left}"
    return served_exactly(ParquetEmbeddingStore(root), "1", 1) or (
        PASS, f"{len(crashed)} crashed temp folder removed; committed {fresh.committed_versions()}")


@probe("F3-parquet-cleanup-spares-foreign", 3,
       "parquet: crashed temp folder (aged) beside a foreign `.tmp-notes` and a `.tmp-model_version=*` "
       "symlink to a user's folder; next write", "only the crashed folder is removed; foreign data intact",
       timeout_s=120)
def _p_cleanup_foreign(ws: Workspace, d: Path) -> Outcome:
    from embeddings.parquet_store import ParquetEmbeddingStore

    root = d / "store"
    ParquetEmbeddingStore(root, fsync=False).write(batches("1", 1))
    crashed = _kill_writer_half_way(root, d)
    foreign, outside = root / ".tmp-notes", d / "outside"
    link = root / f".tmp-model_version=v5-{'c' * 32}"
    for folder in (foreign, outside):
        folder.mkdir()
        (folder / "keep.txt").write_text("x")
    link.symlink_to(outside, target_is_directory=True)
    old = time.time() - 2 * 3600
    for p in (*crashed, foreign, outside):
        os.utime(p, (old, old))
    os.utime(link, (old, old), follow_symlinks=False)
    before = {p: snapshot(p) for p in (foreign, outside)}
    before[link] = snapshot(link)
    ParquetEmbeddingStore(root, fsync=False).write(batches("6", 6))
    for path, snap in before.items():
        problem = compare_snapshots(path, snap, snapshot(path))
        if problem:
            return problem
    left = [p.name for p in crashed if os.path.lexists(p)]
    if left:
        return CORRUPTED, f"crashed temp folder left: {left}"
    return PASS, "crashed folder removed; foreign folder, link and target intact"


@probe("F3-parquet-reader-race", 3, "parquet: 2 readers load v1 while it is rewritten 15 times (10 files each)",
       "every load holds one commit's values only, never a gap", timeout_s=120)
def _p_reader_race(ws: Workspace, d: Path) -> Outcome:
    from embeddings.parquet_store import ParquetEmbeddingStore
    from embeddings.record import EmbeddingBatch

    users = np.array([f"u{i}" for i in range(400)], dtype=object)
    writer = ParquetEmbeddingStore(d, rows_per_file=40, fsync=False)

    def commit(k: int) -> None:
        def gen() -> Iterator[Any]:
            for i in range(0, 400, 100):
                yield EmbeddingBatch.create(users[i:i + 100], np.full((100, E), float(k), np.float32), "v1", k)
            yield EmbeddingBatch.cold_start(np.full(E, float(k), np.float32), "v1", k)
        writer.write(gen())

    commit(0)
    done = threading.Event()
    seen: List[float] = []
    problems: List[str] = []

    def read_loop() -> None:
        reader = ParquetEmbeddingStore(d)
        while not done.is_set():
            try:
                batch = reader.read_version("v1")
            except Exception as exc:  # noqa: BLE001 - any failure to read a committed version
                problems.append(f"gap: {type(exc).__name__}: {exc}")
                continue
            values = np.unique(batch.embeddings)
            if values.size != 1 or batch.num_users != 401:
                problems.append(f"mixed: values {values.tolist()[:4]}, {batch.num_users} rows")
            seen.append(float(values[0]))

    readers = [threading.Thread(target=read_loop, daemon=True) for _ in range(2)]
    for t in readers:
        t.start()
    try:
        for k in range(1, 16):
            commit(k)
    finally:
        done.set()
        for t in readers:
            t.join(timeout=30)
    if problems:
        return (LOST if problems[0].startswith("gap") else CORRUPTED,
                f"{len(problems)} of {len(seen) + len(problems)} loads bad: {problems[0][:120]}")
    return PASS, f"{len(seen)} loads, {len(set(seen))} distinct commits seen, none mixed"


@probe("F3-parquet-hostile-version", 3, "parquet: write versions `../escape`, `a/b`, `` and `.hidden`",
       "each refused (ValueError); nothing written outside the store root")
def _p_hostile_version(ws: Workspace, d: Path) -> Outcome:
    from embeddings.parquet_store import ParquetEmbeddingStore

    store = ParquetEmbeddingStore(d / "sub" / "store", fsync=False)
    (d / "sub").mkdir()
    before = snapshot(d)
    for version in ("../escape", "a/b", "", ".hidden"):
        try:
            store.write(batches(version, 1))
        except ValueError:
            continue
        return ACCEPTED, f"version {version!r} accepted; entries {sorted(os.listdir(d / 'sub'))}"
    return compare_snapshots(d, before, snapshot(d)) or (PASS, "all four refused, nothing written")


@probe("F3-parquet-bad-stream", 3, "parquet: a stream without cold-start row; one mixing versions v1/v2",
       "ValueError each; nothing committed, store folder empty")
def _p_bad_stream(ws: Workspace, d: Path) -> Outcome:
    from embeddings.parquet_store import ParquetEmbeddingStore
    from embeddings.record import EmbeddingBatch

    store = ParquetEmbeddingStore(d, fsync=False)
    streams = ([EmbeddingBatch.create(USERS, vectors(1), "v1", 1)],
               [EmbeddingBatch.create(USERS[:5], vectors(1)[:5], "v1", 1),
                EmbeddingBatch.create(USERS[5:], vectors(1)[5:], "v2", 1)])
    for stream in streams:
        try:
            store.write(stream)
        except ValueError:
            continue
        return ACCEPTED, f"accepted; committed {store.committed_versions()}"
    left = sorted(os.listdir(d))
    return (CORRUPTED, f"left {left}") if left or store.committed_versions() else (PASS, "both refused, nothing left")


# ============================================================================== finding 5
PROBES.append(Probe(
    "F5-refresh-pipeline-run", 5, "`limaml refresh` on the pipeline's own pushed model and data",
    "refreshes (reads only the columns the model needs)",
    covered_by="tests/test_refresh.py::test_refresh_reads_only_the_columns_the_model_needs and "
               "::test_refresh_parquet_changes_exactly_users_with_new_interactions (a real Transform on the "
               "pipeline's schema; too slow for a probe)"))


@probe("F5-cli-bad-as-of", 5, "`limaml refresh --as-of 'last tuesday'`",
       "exit 2, one line naming the value", timeout_s=120)
def _p_refresh_as_of(ws: Workspace, d: Path) -> Outcome:
    cmd = limaml_cmd("refresh", "--model", str(d / "serving" / "3"), "--data", str(d / "data"),
                     "--as-of", "last tuesday", "--store", f"parquet:{d / 'store'}")
    return cli_probe(cmd, CliExpect(message=("'last tuesday'", "neither unix seconds nor an ISO date"),
                                    protect=[d], absent=[d / "store"]), ws, timeout_s=90)


@probe("F5-cli-missing-model", 5, "`limaml refresh --model serving/3` (a mistyped model folder)",
       "exit 2, one line: model folder ... does not exist; no store created", timeout_s=120)
def _p_refresh_model(ws: Workspace, d: Path) -> Outcome:
    cmd = limaml_cmd("refresh", "--model", str(d / "serving" / "3"), "--data", str(d / "data"),
                     "--as-of", "0", "--store", f"parquet:{d / 'store'}")
    return cli_probe(cmd, CliExpect(message=("serving/3", "does not exist"), protect=[d], absent=[d / "store"]),
                     ws, timeout_s=90)


def _open_parquet(root: Path, create: bool = False) -> Any:
    from components.meta_embedding_gen.refresh_args import parse_store
    from components.meta_embedding_gen.refresh_store import open_store

    return open_store(parse_store(f"parquet:{root}"), create=create)


def _expect_refusal(fn: Callable[[], Any], needles: Sequence[str], protect: Sequence[Path] = (),
                    absent: Sequence[Path] = ()) -> Outcome:
    """Runs ``fn``, expecting a ``ValueError`` whose message holds ``needles``; protected paths unchanged."""
    before = {p: snapshot(p) for p in protect}
    try:
        fn()
        verdict: Outcome = (ACCEPTED, "accepted (no error)")
    except ValueError as exc:
        msg = str(exc)
        missing = [n for n in needles if n not in msg]
        verdict = (WRONG, f"message lacks {missing}: {msg[:120]}") if missing else (PASS, msg[:140])
    for path, snap in before.items():
        problem = compare_snapshots(path, snap, snapshot(path))
        if problem:
            return problem
    created = [str(p) for p in absent if os.path.lexists(p)]
    if created:
        return CORRUPTED, f"created {created}; {verdict[1]}"
    return verdict


@probe("F5-store-typo", 5, "refresh store `parquet:DIR/stroe` (typo of an existing store), no --create",
       "ValueError: does not exist ... --create; nothing created")
def _p_store_typo(ws: Workspace, d: Path) -> Outcome:
    from embeddings.parquet_store import ParquetEmbeddingStore

    ParquetEmbeddingStore(d / "store", fsync=False).write(batches("7", 1))
    return _expect_refusal(lambda: _open_parquet(d / "stroe"), ("does not exist", "--create"),
                           protect=[d / "store"], absent=[d / "stroe"])


@probe("F5-store-empty-folder", 5, "refresh store = an existing empty folder, no --create",
       "ValueError: is an empty folder; folder stays empty")
def _p_store_empty(ws: Workspace, d: Path) -> Outcome:
    (d / "empty").mkdir()
    return _expect_refusal(lambda: _open_parquet(d / "empty"), ("is an empty folder",), protect=[d / "empty"])


@probe("F5-store-foreign-create", 5, "refresh store = a folder with notes.txt, even with --create",
       "ValueError: is not a Parquet embedding store; notes.txt intact")
def _p_store_foreign(ws: Workspace, d: Path) -> Outcome:
    (d / "foreign").mkdir()
    (d / "foreign" / "notes.txt").write_text("x")
    return _expect_refusal(lambda: _open_parquet(d / "foreign", create=True),
                           ("is not a Parquet embedding store",), protect=[d / "foreign"])


@probe("F5-store-is-file", 5, "refresh store `parquet:FILE` (a file), with --create",
       "ValueError: exists and is not a folder; file intact")
def _p_store_file(ws: Workspace, d: Path) -> Outcome:
    (d / "file").write_text("x")
    return _expect_refusal(lambda: _open_parquet(d / "file", create=True), ("is not a folder",), protect=[d / "file"])


@probe("F5-store-bad-spec", 5, "refresh store `redis:x` and `parquet:` (empty path)",
       "ValueError: not understood (both forms shown)")
def _p_store_spec(ws: Workspace, d: Path) -> Outcome:
    from components.meta_embedding_gen.refresh_args import parse_store

    for spec in ("redis:x", "parquet:"):
        verdict = _expect_refusal(lambda spec=spec: parse_store(spec), ("not understood", "parquet:<dir>"))
        if verdict[0] != PASS:
            return verdict[0], f"{spec!r}: {verdict[1]}"
    return PASS, "both refused: store '...' is not understood; use parquet:<dir> or bigtable:..."


@probe("F5-store-real-ok", 5, "refresh store = an existing store, no --create (control)",
       "opens it; committed versions unchanged")
def _p_store_real(ws: Workspace, d: Path) -> Outcome:
    from embeddings.parquet_store import ParquetEmbeddingStore

    ParquetEmbeddingStore(d / "store", fsync=False).write(batches("7", 1))
    before = snapshot(d / "store")
    store = _open_parquet(d / "store")
    problem = compare_snapshots(d / "store", before, snapshot(d / "store"))
    return problem or (PASS, f"opened; committed {store.committed_versions()}")


@probe("F5-bigtable-missing-table", 5, "refresh store `bigtable:p/limaml/<new table>` without --create",
       "ValueError: does not exist ... --create; table not created")
def _p_bt_missing(ws: Workspace, d: Path) -> Outcome:
    from components.meta_embedding_gen.refresh_args import parse_store
    from components.meta_embedding_gen.refresh_store import open_store

    client = ws.emulator().client("p")
    table_id = f"typo-{uuid.uuid4().hex[:6]}"
    verdict = _expect_refusal(lambda: open_store(parse_store(f"bigtable:p/limaml/{table_id}"), timeout_s=10,
                                                 client=client), ("does not exist", "--create"))
    if client.instance("limaml").table(table_id).exists():
        return CORRUPTED, f"table created; {verdict[1]}"
    return verdict


# ============================================================================== findings 6 and 7: serving
SECRETS = (b"secret", b"bigtable.internal", b"/srv/run42")


class MemoryStore:
    """Committed versions in memory; ``fail`` makes every lookup raise (store down).

    Its errors name a host, a path and a table (as real stores' errors do): none may reach a client.
    """

    def __init__(self, versions: Sequence[str] = ("2",)) -> None:
        self.versions = set(versions)
        self.fail = False

    def __repr__(self) -> str:
        return "MemoryStore(projects/secret-project/instances/i/tables/secret_table)"

    def lookup(self, user_ids: Sequence[str], model_version: str, timeout_s: Optional[float] = None) -> Any:
        from embeddings.record import COLD_START_USER, StoreLookup, VersionNotCommittedError

        if self.fail:
            raise ConnectionError("bigtable.internal.example:443 refused")
        if str(model_version) not in self.versions:
            raise VersionNotCommittedError(f"model version {model_version!r} is not committed in /srv/run42/embeddings")
        ids = list(user_ids)
        found = np.array([u in ("alice", COLD_START_USER) for u in ids])
        emb = np.where(found[:, None], 0.5, 0.0).astype(np.float32) * np.ones((len(ids), E), np.float32)
        return StoreLookup(embeddings=emb.astype(np.float32), found=found)


class ServingKit:
    """The toy global block (``tests/serving_fixtures.py``, version 2) behind the in-process model
    server stand-in, an in-memory store, the real ranker and its HTTP service (header and body
    deadlines of 1 s, at most 20 candidates)."""

    MAX_CANDIDATES = 20

    def __init__(self, root: Path) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        from serving import model_server
        from serving.embedding_lookup import EmbeddingLookup
        from serving.ranker import Ranker
        from serving.ranker_service import start_ranker_service
        from tests.serving_fixtures import EMBED_DIM, WEIGHTS, make_candidates, save_toy_global_block

        assert EMBED_DIM == E
        self.base = root / "toy_model"
        save_toy_global_block(str(self.base / "2"), WEIGHTS[2])
        self.candidates = make_candidates(3)
        self.model = model_server.start_model_server(str(self.base), "toy", poll_interval_s=None)
        self.store = MemoryStore()
        self.lookup = EmbeddingLookup(self.store, embedding_dim=E, cache_size=0, timeout_s=2.0)
        self.ranker = Ranker(self.model.target, "toy", self.lookup, timeout_s=5.0,
                             max_candidates=self.MAX_CANDIDATES)
        self.header_timeout_s = self.body_timeout_s = 1.0
        self.service = start_ranker_service(self.ranker, header_timeout_s=self.header_timeout_s,
                                            body_timeout_s=self.body_timeout_s)
        self.port = self.service.port

    def good_body(self) -> bytes:
        """A valid ``/v1/rank`` body (user alice, 3 candidates)."""
        return json.dumps({"user_id": "alice", "candidates": self.candidates}).encode()

    def close(self) -> None:
        """Stops the service, the ranker and the model server."""
        self.service.stop()
        self.ranker.close()
        self.lookup.close()
        self.model.stop()


def http_call(port: int, method: str, path: str, body: Optional[bytes] = None,
              headers: Optional[Dict[str, str]] = None, timeout_s: float = 15.0
              ) -> Tuple[int, Optional[Dict[str, Any]], bytes]:
    """One HTTP request: (status, JSON answer or None, raw answer)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        raw = resp.read()
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = None
        return resp.status, answer, raw
    finally:
        conn.close()


def raw_http(port: int, data: bytes, timeout_s: float = 15.0) -> Tuple[Optional[int], bytes, float]:
    """Sends raw bytes; returns (status or None when closed without an answer, answer, seconds)."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(data)
        buf = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            buf += chunk
            head, sep, body = buf.partition(b"\r\n\r\n")
            m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            if sep and m and len(body) >= int(m.group(1)):
                break
    m = re.match(rb"HTTP/1\.[01] (\d{3})", buf)
    return (int(m.group(1)) if m else None), buf, time.monotonic() - t0


def _answer_code(raw: bytes) -> Optional[str]:
    """The ``code`` of a JSON error answer (``raw``: the body, or the whole HTTP answer), however
    the JSON is spaced; None when the body is not a JSON object."""
    body = raw.split(b"\r\n\r\n", 1)[-1] if raw.startswith(b"HTTP/") else raw
    try:
        answer = json.loads(body)
    except ValueError:
        return None
    return answer.get("code") if isinstance(answer, dict) else None


def classify_http(status: Optional[int], expected: Sequence[int], raw: bytes, code: Optional[str] = None,
                  forbidden: Sequence[bytes] = SECRETS) -> Outcome:
    """The verdict of one HTTP answer.

    500 is a ``traceback`` (an unhandled error), another 2xx an ``accepted_bad_input``, any other
    status or a missing ``code`` a ``wrong_error``, as is an answer that shows a ``forbidden`` string.
    """
    text = raw.split(b"\r\n\r\n", 1)[-1][:110].decode("utf-8", "replace")
    if status is None:
        return WRONG, "connection closed without an answer"
    if status not in expected:
        if status == 500:
            return TRACEBACK, f"HTTP 500: {text}"
        if 200 <= status < 300:
            return ACCEPTED, f"HTTP {status}: {text}"
        return WRONG, f"HTTP {status}, expected {list(expected)}: {text}"
    shown = [s.decode() for s in forbidden if s in raw]
    if shown:
        return WRONG, f"HTTP {status} but the answer shows {shown}: {text}"
    if code is not None and _answer_code(raw) != code:
        return WRONG, f"HTTP {status} without code {code!r}: {text}"
    return PASS, f"HTTP {status}: {text}"


def _hostile(body: Callable[["ServingKit"], bytes]) -> Callable[[Workspace, Path], Outcome]:
    def fn(ws: Workspace, d: Path) -> Outcome:
        kit = ws.serving()
        status, _, raw = http_call(kit.port, "POST", "/v1/rank", body(kit))
        return classify_http(status, [400], raw, code="bad_request")
    return fn


def _good_with(**changes: Any) -> Callable[["ServingKit"], bytes]:
    def body(kit: ServingKit) -> bytes:
        return json.dumps({"user_id": "alice", "candidates": kit.candidates, **changes}).encode()
    return body


def _candidate_with(text: str) -> Callable[["ServingKit"], bytes]:
    """A body whose one candidate's release_year is the raw JSON ``text`` (NaN, 1e400, ...)."""
    return lambda kit: (b'{"user_id": "alice", "candidates": [{"item_id": "i", "genres": "A", "release_year": '
                        + text.encode() + b"}]}")


HOSTILE_BODIES: List[Tuple[str, str, Callable[[ServingKit], bytes]]] = [
    ("surrogate-user", 'user_id `"\\ud800x"` (lone surrogate)',
     lambda kit: b'{"user_id": "\\ud800x", "candidates": [{"item_id": "i", "genres": "A", "release_year": 1990}]}'),
    ("surrogate-item", 'a candidate item_id `"\\udfff"`',
     lambda kit: kit.good_body()[:-2] + b', {"item_id": "\\udfff", "genres": "A", "release_year": 1}]}'),
    ("deep-array", "100k-deep JSON array `[[[...]]]`", lambda kit: b"[" * 100_000 + b"]" * 100_000),
    ("deep-in-object", "candidates = a 100k-deep array",
     lambda kit: b'{"user_id": "a", "candidates": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    ("truncated-json", "a valid body cut 5 bytes short (Content-Length matches)", lambda kit: kit.good_body()[:-5]),
    ("invalid-utf8", "user_id holding bytes 0xff 0xfe",
     lambda kit: b'{"user_id": "\xff\xfe", "candidates": [{"item_id": "i", "genres": "A", "release_year": 1}]}'),
    ("json-array", "body `[1, 2, 3]` (not an object)", lambda kit: b"[1, 2, 3]"),
    ("empty-body", "empty body (Content-Length: 0)", lambda kit: b""),
    ("release-year-nan", "release_year `NaN` (Python's json accepts it)", _candidate_with("NaN")),
    ("release-year-1e400", "release_year `1e400` (parses as inf)", _candidate_with("1e400")),
    ("release-year-10e30", "release_year 10**30 (beyond int64)", _candidate_with(str(10 ** 30))),
    ("release-year-bool", "release_year `true`", _candidate_with("true")),
    ("user-id-number", "user_id `123` (a number)", lambda kit: _good_with(user_id=123)(kit)),
    ("user-features-string", 'user_features `"admin"` (not an object)', _good_with(user_features="admin")),
    ("candidates-ints", "candidates `[1, 2]`", _good_with(candidates=[1, 2])),
    ("unknown-field", "an extra top-level field `debug`", _good_with(debug=True)),
    ("too-many-candidates", f"{ServingKit.MAX_CANDIDATES + 1} candidates (max_candidates {ServingKit.MAX_CANDIDATES})",
     lambda kit: json.dumps({"user_id": "alice", "candidates": [kit.candidates[0]] * (kit.MAX_CANDIDATES + 1)}
                            ).encode()),
]
for _name, _action, _body in HOSTILE_BODIES:
    PROBES.append(Probe(f"F6-body-{_name}", 6, f"POST /v1/rank: {_action}",
                        "HTTP 400 bad_request, service keeps serving", _hostile(_body), timeout_s=90))


def _raw_probe(head: Callable[[ServingKit], bytes], expected: Sequence[int], code: Optional[str],
               max_s: float) -> Callable[[Workspace, Path], Outcome]:
    def fn(ws: Workspace, d: Path) -> Outcome:
        kit = ws.serving()
        status, raw, seconds = raw_http(kit.port, head(kit), timeout_s=max_s + 10)
        verdict = classify_http(status, expected, raw, code=code)
        if verdict[0] == PASS and seconds > max_s:
            return HANG, f"answered after {seconds:.1f} s (> {max_s:g} s): {verdict[1]}"
        return verdict[0], f"{verdict[1]} ({seconds:.1f} s)"
    return fn


def _head(extra: str, body: bytes = b"{}") -> Callable[[ServingKit], bytes]:
    return lambda kit: (f"POST /v1/rank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{extra}\r\n"
                        .encode() + body)


RAW_REQUESTS = [
    ("huge-content-length", "Content-Length: 10^12, then 2 bytes", _head("Content-Length: 1000000000000\r\n"),
     [413], "too_large", 5.0, "HTTP 413 too_large at once (no waiting for the body)"),
    ("negative-content-length", "Content-Length: -5", _head("Content-Length: -5\r\n"), [400], None, 5.0,
     "HTTP 400"),
    ("non-numeric-content-length", "Content-Length: 12abc", _head("Content-Length: 12abc\r\n"), [400], None,
     5.0, "HTTP 400"),
    ("chunked-no-length", "Transfer-Encoding: chunked, no Content-Length",
     _head("Transfer-Encoding: chunked\r\n", b"2\r\n{}\r\n0\r\n\r\n"), [411], "length_required", 5.0,
     "HTTP 411 length_required"),
    ("short-body-stall", "Content-Length: 100, 2 bytes sent, then silence", _head("Content-Length: 100\r\n"),
     [408], "body_timeout", 8.0, "HTTP 408 body_timeout after the 1 s body deadline"),
    ("get-rank", "GET /v1/rank", lambda kit: b"GET /v1/rank HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
     [405], "method_not_allowed", 5.0, "HTTP 405 method_not_allowed"),
    ("unknown-path", "POST /v2/rank", lambda kit: b"POST /v2/rank HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
     [404], "not_found", 5.0, "HTTP 404 not_found"),
    ("delete-healthz", "DELETE /healthz",
     lambda kit: b"DELETE /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
     [405], "method_not_allowed", 5.0, "HTTP 405"),
]
for _name, _action, _head_fn, _expected, _code, _max_s, _expect_text in RAW_REQUESTS:
    PROBES.append(Probe(f"F6-http-{_name}", 6, _action, _expect_text,
                        _raw_probe(_head_fn, _expected, _code, _max_s), timeout_s=90))


def _dropped_within(port: int, data: bytes, limit_s: float) -> Outcome:
    """Opens a connection, sends ``data`` (maybe nothing) and waits for the server to drop it."""
    with socket.create_connection(("127.0.0.1", port), timeout=limit_s + 10) as sock:
        if data:
            sock.sendall(data)
        t0 = time.monotonic()
        try:
            got = sock.recv(1024)
        except socket.timeout:
            return HANG, f"connection still open after {limit_s + 10:g} s"
        except ConnectionResetError:
            got = b""
        seconds = time.monotonic() - t0
    if got and not got.startswith(b"HTTP/1.1 408"):
        return WRONG, f"answered {got[:40]!r} instead of dropping"
    if seconds > limit_s:
        return HANG, f"dropped only after {seconds:.1f} s"
    return PASS, f"dropped after {seconds:.1f} s" + (f" with {got[:12]!r}" if got else "")


@probe("F6-slow-header", 6, "send `POST /v1/rank HTTP/1.1\\r\\nHost: x\\r\\n` and never end the head",
       "connection dropped after the 1 s header deadline", timeout_s=60)
def _p_slow_header(ws: Workspace, d: Path) -> Outcome:
    kit = ws.serving()
    return _dropped_within(kit.port, b"POST /v1/rank HTTP/1.1\r\nHost: x\r\n", kit.header_timeout_s + 5)


@probe("F6-idle-connection", 6, "open a connection and send nothing", "dropped after the header deadline",
       timeout_s=60)
def _p_idle(ws: Workspace, d: Path) -> Outcome:
    kit = ws.serving()
    return _dropped_within(kit.port, b"", kit.header_timeout_s + 5)


@probe("F6-slowloris-200", 6, "200 connections each send half a request head and stall; then a valid request",
       "the valid request is answered (HTTP 200) within 5 s while they hang on", timeout_s=60)
def _p_slowloris(ws: Workspace, d: Path) -> Outcome:
    kit = ws.serving()
    socks = []
    try:
        for _ in range(200):
            sock = socket.create_connection(("127.0.0.1", kit.port), timeout=10)
            sock.sendall(b"POST /v1/rank HTTP/1.1\r\nHost: x\r\n")
            socks.append(sock)
        t0 = time.monotonic()
        status, _, raw = http_call(kit.port, "POST", "/v1/rank", kit.good_body(), timeout_s=15)
        seconds = time.monotonic() - t0
    finally:
        for sock in socks:
            sock.close()
    verdict = classify_http(status, [200], raw)
    if verdict[0] == PASS and seconds > 5:
        return HANG, f"answered only after {seconds:.1f} s"
    return verdict[0], f"HTTP {status} after {seconds:.2f} s with 200 stalled connections open"


@probe("F6-huge-header", 6, "a request head with one 1 MB header line",
       "refused with a 4xx or dropped, no 500; the service keeps serving", timeout_s=60)
def _p_huge_header(ws: Workspace, d: Path) -> Outcome:
    kit = ws.serving()
    head = (b"POST /v1/rank HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * (1 << 20) + b"\r\nContent-Length: 2\r\n\r\n{}")
    try:
        status, raw, _ = raw_http(kit.port, head, timeout_s=20)
    except (BrokenPipeError, ConnectionResetError) as exc:
        status, raw = None, f"dropped while sending ({type(exc).__name__})".encode()
    if status is not None and status >= 500:
        return TRACEBACK, f"HTTP {status}"
    if status is not None and status < 400:
        return ACCEPTED, f"HTTP {status}"
    after, _, _ = http_call(kit.port, "POST", "/v1/rank", kit.good_body())
    if after != 200:
        return WRONG, f"service answers HTTP {after} afterwards"
    shown = f"HTTP {status}" if status else raw.decode("utf-8", "replace")[:60] or "dropped"
    return PASS, f"{shown}; next request HTTP 200"


@probe("F6-token-missing", 6, "service with a token: POST without Authorization, with `Bearer wrong`, "
       "and with the bare token (no `Bearer`)",
       "HTTP 401 unauthorized each time", timeout_s=60)
def _p_token_missing(ws: Workspace, d: Path) -> Outcome:
    from serving.ranker_service import start_ranker_service

    kit = ws.serving()
    with start_ranker_service(kit.ranker, auth_token="s3cret") as svc:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            status, _, raw = http_call(svc.port, "POST", "/v1/rank", kit.good_body(), headers)
            verdict = classify_http(status, [401], raw, code="unauthorized", forbidden=(b"s3cret",))
            if verdict[0] != PASS:
                return verdict[0], f"headers {headers}: {verdict[1]}"
    return PASS, "HTTP 401 unauthorized without, with a wrong and with a scheme-less token"


@probe("F6-token-right", 6, "service with a token: `Bearer s3cret`; GET /healthz without token (control)",
       "HTTP 200 both", timeout_s=60)
def _p_token_right(ws: Workspace, d: Path) -> Outcome:
    from serving.ranker_service import start_ranker_service

    kit = ws.serving()
    with start_ranker_service(kit.ranker, auth_token="s3cret") as svc:
        status, _, raw = http_call(svc.port, "POST", "/v1/rank", kit.good_body(), {"Authorization": "Bearer s3cret"})
        if status != 200:
            return classify_http(status, [200], raw)
        status, _, raw = http_call(svc.port, "GET", "/healthz")
        return classify_http(status, [200], raw)


@probe("F6-load-burst", 6, "60 clients connect at once, 4 keep-alive requests each (asyncio load)",
       "240 x HTTP 200; no resets, 5xx or timeouts", timeout_s=150)
def _p_load(ws: Workspace, d: Path) -> Outcome:
    from benchmarks.ranker_load import run_load

    kit = ws.serving()
    row = run_load(kit.service.url, kit.good_body(), clients=60, seconds=90, requests_per_client=4,
                   timeout_s=30, engine="asyncio")
    summary = (f"ok {row['ok']}, 5xx {row['status_5xx']}, resets {row['resets']}, timeouts {row['timeouts']}, "
               f"p99 {row.get('p99_ms') or 0:.0f} ms")
    if row["timeouts"]:
        return HANG, summary
    if row["status_5xx"]:
        return TRACEBACK, summary
    if row["resets"] or row["ok"] != 240:
        return WRONG, summary
    return PASS, summary


@probe("F6-still-serving", 6, "after every hostile probe above: a valid request",
       "HTTP 200 with 3 scores", timeout_s=60)
def _p_still_serving(ws: Workspace, d: Path) -> Outcome:
    kit = ws.serving()
    status, answer, raw = http_call(kit.port, "POST", "/v1/rank", kit.good_body())
    if status == 200 and answer and len(answer.get("scores", [])) != 3:
        return CORRUPTED, f"HTTP 200 with {answer.get('scores')}"
    return classify_http(status, [200], raw)


# ------------------------------------------------------------------------------ finding 7
@probe("F7-bind-model-server-default", 7, "`python -m serving.model_server` flags with no --host",
       "--host defaults to 127.0.0.1")
def _p_bind_model_default(ws: Workspace, d: Path) -> Outcome:
    from serving.model_server.cli import build_arg_parser

    host = build_arg_parser().parse_args([]).host
    return (PASS, f"host {host}") if host == "127.0.0.1" else (WRONG, f"binds {host} by default")


@probe("F7-bind-ranker-default", 7, "`python -m serving.ranker_service` flags with no --host",
       "--host defaults to 127.0.0.1")
def _p_bind_ranker_default(ws: Workspace, d: Path) -> Outcome:
    from serving.ranker_service import build_arg_parser

    args = build_arg_parser().parse_args(["--model-target", "h:1", "--model-name", "m", "--embedding-lookup", "a:b"])
    return (PASS, f"host {args.host}") if args.host == "127.0.0.1" else (WRONG, f"binds {args.host} by default")


@probe("F7-bind-limaml-serve-default", 7, "`limaml serve` flags with no --host", "--host defaults to 127.0.0.1")
def _p_bind_serve_default(ws: Workspace, d: Path) -> Outcome:
    from limaml.cli import build_parser

    args = build_parser().parse_args(["serve", "--run", str(d)])
    return (PASS, f"host {args.host}") if args.host == "127.0.0.1" else (WRONG, f"binds {args.host} by default")


def listen_addresses(port: int) -> List[str]:
    """Addresses of the listening TCP sockets on ``port`` (from /proc/net/tcp and tcp6)."""
    out = []
    for name, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            ip_hex, port_hex = parts[1].split(":")
            if parts[3] != "0A" or int(port_hex, 16) != port:
                continue
            raw = b"".join(bytes.fromhex(ip_hex[i:i + 8])[::-1] for i in range(0, len(ip_hex), 8))
            out.append(socket.inet_ntop(family, raw))
    return out


LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")


def _loopback_only(port: int) -> Outcome:
    addresses = listen_addresses(port)
    if not addresses:
        return WRONG, f"nothing listens on port {port}"
    wide = [a for a in addresses if a not in LOOPBACK]
    return (WRONG, f"listens on {addresses}") if wide else (PASS, f"listens on {addresses} only")


@probe("F7-bind-model-server-launched", 7, "launch `python -m serving.model_server --port P --model_base_path ...`",
       "its socket listens on 127.0.0.1 only", timeout_s=180)
def _p_bind_model_launched(ws: Workspace, d: Path) -> Outcome:
    from embeddings.emulator import free_port

    kit = ws.serving()
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2", PYTHONWARNINGS="ignore")
    proc = subprocess.Popen([sys.executable, "-m", "serving.model_server", "--port", str(port), "--model_name", "m",
                             "--model_base_path", str(kit.base), "--file_system_poll_wait_seconds", "0"],
                            cwd=str(REPO), env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    killer = threading.Timer(150.0, proc.kill)  # the probe's own deadline: never leave it running
    killer.start()
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if "serving" not in line:
            return WRONG, f"did not start (rc {proc.poll()}): {line[:80]!r}"
        return _loopback_only(port)
    finally:
        killer.cancel()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@probe("F7-bind-ranker-started", 7, "`start_ranker_service(ranker)` with no host", "listens on 127.0.0.1 only")
def _p_bind_ranker_started(ws: Workspace, d: Path) -> Outcome:
    return _loopback_only(ws.serving().port)


@probe("F7-body-store-down", 7, "store raises `ConnectionError('bigtable.internal.example:443 refused')`",
       "HTTP 200 cold start, degraded; no host/table in the answer")
def _p_store_down(ws: Workspace, d: Path) -> Outcome:
    kit = ws.serving()
    kit.store.fail = True
    try:
        status, answer, raw = http_call(kit.port, "POST", "/v1/rank", kit.good_body())
    finally:
        kit.store.fail = False
    verdict = classify_http(status, [200], raw)
    if verdict[0] == PASS and not (answer or {}).get("degraded"):
        return CORRUPTED, f"not marked degraded: {raw[:100]!r}"
    return verdict


@probe("F7-body-not-committed", 7, "served version 2 has no embeddings (store error names /srv/run42/...)",
       "HTTP 503 embeddings_not_committed; no path in the answer")
def _p_not_committed(ws: Workspace, d: Path) -> Outcome:
    kit = ws.serving()
    kit.store.versions = set()
    try:
        status, _, raw = http_call(kit.port, "POST", "/v1/rank", kit.good_body())
    finally:
        kit.store.versions = {"2"}
    return classify_http(status, [503], raw, code="embeddings_not_committed")


@probe("F7-readyz-store-down", 7, "GET /readyz while the store is down", "HTTP 503; no host/table in the answer")
def _p_readyz_down(ws: Workspace, d: Path) -> Outcome:
    kit = ws.serving()
    kit.store.fail = True
    try:
        status, _, raw = http_call(kit.port, "GET", "/readyz")
    finally:
        kit.store.fail = False
    return classify_http(status, [503], raw, code="embeddings_unavailable")


@probe("F7-body-model-down", 7, "model server stopped behind a running ranker",
       "HTTP 503 model_unavailable; no host or port in the answer", timeout_s=90)
def _p_model_down(ws: Workspace, d: Path) -> Outcome:
    from serving import model_server
    from serving.ranker import Ranker
    from serving.ranker_service import start_ranker_service

    kit = ws.serving()
    handle = model_server.start_model_server(str(kit.base), "m", poll_interval_s=None)
    ranker = Ranker(handle.target, "m", kit.lookup, timeout_s=2.0)
    try:
        with start_ranker_service(ranker) as svc:
            handle.stop()
            status, _, raw = http_call(svc.port, "POST", "/v1/rank", kit.good_body())
            return classify_http(status, [503], raw, code="model_unavailable",
                                 forbidden=(*SECRETS, b"127.0.0.1", str(handle.port).encode(), str(kit.base).encode()))
    finally:
        ranker.close()
        handle.stop()


def _predict(kit: ServingKit, request: Any, timeout_s: float = 30.0) -> Tuple[str, str]:
    """Sends a PredictRequest to the kit's model server: (status code name, details)."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    with grpc.insecure_channel(kit.model.target, options=[("grpc.max_send_message_length", 200 << 20),
                                                          ("grpc.max_receive_message_length", 200 << 20)]) as ch:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
        try:
            stub.Predict(request, timeout=timeout_s)
            return "OK", "scored"
        except grpc.RpcError as err:
            return err.code().name, str(err.details())


def _dense_request(model: str, emb_dims: Sequence[int], years_dims: Sequence[int],
                   emb_values: Sequence[float] = (0.5,)) -> Any:
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2

    from schema import features as F

    def shape(dims: Sequence[int]) -> Any:
        return tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=x) for x in dims])

    req = predict_pb2.PredictRequest()
    req.model_spec.name = model
    req.model_spec.signature_name = "dense"
    emb = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=shape(emb_dims))
    emb.float_val.extend(emb_values)
    years = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT64, tensor_shape=shape(years_dims))
    years.int64_val.extend([1990])
    req.inputs[F.META_EMBEDDING].CopyFrom(emb)
    req.inputs[F.RELEASE_YEAR].CopyFrom(years)
    return req


def _grpc_probe(make: Callable[[ServingKit], Any], expected: str) -> Callable[[Workspace, Path], Outcome]:
    def fn(ws: Workspace, d: Path) -> Outcome:
        kit = ws.serving()
        code, details = _predict(kit, make(kit))
        observed = f"{code}: {details[:110]}"
        if code == expected:
            if str(kit.base) in details:
                return WRONG, f"{code} but details show the model path: {details[:80]}"
            return PASS, observed
        if code == "OK":
            return ACCEPTED, "OK: scored"
        if code == "DEADLINE_EXCEEDED":
            return HANG, observed
        return (TRACEBACK if code in ("INTERNAL", "UNKNOWN") else WRONG), observed
    return fn


def _big_request(kit: ServingKit) -> Any:
    from tensorflow.core.framework import types_pb2
    from tensorflow_serving.apis import predict_pb2

    from schema import features as F
    from serving.predict_request import numeric_tensor

    n = (100 << 20) // (4 * E + 8)
    big = predict_pb2.PredictRequest()
    big.model_spec.name = "toy"
    big.model_spec.signature_name = "dense"
    big.inputs[F.META_EMBEDDING].CopyFrom(numeric_tensor(np.zeros((n, E), np.float32), types_pb2.DT_FLOAT))
    big.inputs[F.RELEASE_YEAR].CopyFrom(numeric_tensor(np.full(n, 1990, np.int64), types_pb2.DT_INT64))
    return big


GRPC_REQUESTS = [
    ("grpc-ok", "Predict [1, 4] embedding + [1] year (control)", lambda kit: _dense_request("toy", [1, E], [1]),
     "OK", "scored"),
    ("grpc-negative-dim", "Predict with embedding shape [-1, 4]", lambda kit: _dense_request("toy", [-1, E], [1]),
     "INVALID_ARGUMENT", "INVALID_ARGUMENT"),
    ("grpc-negative-year-dim", "Predict with release_year shape [-5]",
     lambda kit: _dense_request("toy", [1, E], [-5]), "INVALID_ARGUMENT", "INVALID_ARGUMENT"),
    ("grpc-huge-dims", "Predict with shapes [2^40, 4] and [2^40] (one value each)",
     lambda kit: _dense_request("toy", [1 << 40, E], [1 << 40]), "INVALID_ARGUMENT",
     "INVALID_ARGUMENT, no 2^42-element array built"),
    ("grpc-value-count", "Predict with 3 values for a [1, 4] shape",
     lambda kit: _dense_request("toy", [1, E], [1], [0.1, 0.2, 0.3]), "INVALID_ARGUMENT", "INVALID_ARGUMENT"),
    ("grpc-100mb", "a well-formed 100 MB PredictRequest", _big_request, "RESOURCE_EXHAUSTED",
     "RESOURCE_EXHAUSTED (message limit), not scored"),
    ("grpc-unknown-model", "Predict for model `nope`", lambda kit: _dense_request("nope", [1, E], [1]),
     "NOT_FOUND", "NOT_FOUND; details without the model base path"),
]
for _name, _action, _make, _code, _expect_text in GRPC_REQUESTS:
    PROBES.append(Probe(f"F7-{_name}", 7, _action, _expect_text, _grpc_probe(_make, _code), timeout_s=120))


@probe("F7-grpc-token", 7, "model server with a token: GetModelStatus without, and with `Bearer no`",
       "UNAUTHENTICATED both times", timeout_s=120)
def _p_grpc_token(ws: Workspace, d: Path) -> Outcome:
    import grpc
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    from serving import model_server

    kit = ws.serving()
    handle = model_server.launch_model_server(str(kit.base), "g", binary="", auth_token="tok-1")
    try:
        with grpc.insecure_channel(handle.target) as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            req = get_model_status_pb2.GetModelStatusRequest()
            req.model_spec.name = "g"
            for metadata in ((), (("authorization", "Bearer no"),)):
                try:
                    stub.GetModelStatus(req, timeout=10, metadata=metadata)
                    return ACCEPTED, f"answered with metadata {metadata}"
                except grpc.RpcError as err:
                    if err.code() != grpc.StatusCode.UNAUTHENTICATED:
                        return WRONG, f"{err.code().name}: {err.details()}"
            ok = stub.GetModelStatus(req, timeout=10, metadata=(("authorization", "Bearer tok-1"),))
            return PASS, f"UNAUTHENTICATED twice; right token: {len(ok.model_version_status)} version(s)"
    finally:
        handle.stop()


# ============================================================================== the report
def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def markdown_table(rows: Sequence[Row]) -> str:
    """The Markdown table of ``rows``."""
    lines = ["| probe | finding | what was done | expected | observed | verdict |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        verdict = r.verdict if r.verdict in (PASS, COVERED, SKIPPED) else f"**{r.verdict}**"
        lines.append(f"| {_cell(r.id)} | {r.finding} | {_cell(r.action)} | {_cell(r.expected)} | "
                     f"{_cell(r.observed)} | {verdict} |")
    return "\n".join(lines)


def summary_line(rows: Sequence[Row]) -> str:
    """``N probes: P passed, F failed (lost data a, corrupted b, ...)`` (+ covered / skipped rows)."""
    probes = [r for r in rows if r.verdict not in (COVERED, SKIPPED)]
    passed = sum(r.verdict == PASS for r in probes)
    counts = ", ".join(f"{v.replace('_', ' ')} {sum(r.verdict == v for r in probes)}" for v in FAILURES)
    line = f"{len(probes)} probes: {passed} passed, {len(probes) - passed} failed ({counts})"
    extra = [f"{sum(r.verdict == v for r in rows)} {v}" for v in (COVERED, SKIPPED)
             if any(r.verdict == v for r in rows)]
    return line + (f"; not probed: {', '.join(extra)}" if extra else "")


def select(ids: Sequence[str] = ()) -> List[Probe]:
    """The probes whose id starts with one of ``ids`` (all when empty), in table order."""
    return [p for p in PROBES if not ids or any(p.id.startswith(i) for i in ids)]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the probes, prints the table and the summary; exit 1 when a probe failed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write the rows (and the summary) to this JSON file")
    parser.add_argument("--only", nargs="*", default=[], help="run only probes whose id starts with these")
    parser.add_argument("--list", action="store_true", help="list the probes and exit")
    args = parser.parse_args(argv)
    probes = select(args.only)
    if args.list:
        for p in probes:
            print(f"{p.id:<36} F{p.finding}  {p.action}")
        return 0
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    warnings.filterwarnings("ignore", category=FutureWarning)  # Google clients' Python-version notices
    t0 = time.monotonic()
    ws = Workspace()
    try:
        rows = run_probes(probes, ws, log=lambda s: print(s, file=sys.stderr, flush=True))
    finally:
        ws.close()
    wall = time.monotonic() - t0
    summary = summary_line(rows)
    print(markdown_table(rows))
    print()
    print(f"{summary}; wall time {wall:.0f} s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"summary": summary, "wall_s": round(wall, 1),
                       "rows": [dataclasses.asdict(r) for r in rows]}, fh, indent=2)
    failed = [r for r in rows if r.verdict in FAILURES]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
