"""gRPC's polling I/O in the serving processes (serving/grpc_io.py)."""
from __future__ import annotations

import os
import subprocess
import sys

import yaml

from serving import grpc_io
from serving.grpc_io import GRPC_EXPERIMENTS_ENV, POLLING_IO_EXPERIMENTS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fresh(code: str, env_extra=None) -> subprocess.CompletedProcess:
    """Runs ``code`` in a new interpreter, without this process's GRPC_EXPERIMENTS."""
    env = {k: v for k, v in os.environ.items() if k != GRPC_EXPERIMENTS_ENV}
    env.update(env_extra or {})
    env["PYTHONPATH"] = ROOT
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=env, cwd=ROOT)


def test_serving_environ_adds_the_setting_and_keeps_the_users():
    env = grpc_io.serving_environ
    assert env({"A": "1"}) == {"A": "1", GRPC_EXPERIMENTS_ENV: POLLING_IO_EXPERIMENTS}
    assert env({GRPC_EXPERIMENTS_ENV: "-x"})[GRPC_EXPERIMENTS_ENV] == "-x"
    # empty: the user asked for gRPC's defaults
    assert env({GRPC_EXPERIMENTS_ENV: ""})[GRPC_EXPERIMENTS_ENV] == ""
    base = {"A": "1"}
    env(base)
    assert base == {"A": "1"}  # a copy


def test_prefer_polling_io_changes_nothing_once_grpc_is_imported():
    import grpc  # noqa: F401 - this test process has imported it anyway

    env = {}
    assert grpc_io.prefer_polling_io(env) is False
    assert env == {}


def test_prefer_polling_io_in_a_fresh_process_and_grpc_knows_every_name():
    """Before grpc is imported the setting is made, and gRPC itself accepts each experiment name
    (a grpcio that dropped one logs "Unknown experiment" and the setting would do nothing)."""
    code = (
        "import os, sys\n"
        "from serving.grpc_io import prefer_polling_io\n"
        "print(prefer_polling_io(), os.environ['GRPC_EXPERIMENTS'], flush=True)\n"
        "import grpc\n"
        "ch = grpc.insecure_channel('127.0.0.1:9')\n"
        "try:\n"
        "    grpc.channel_ready_future(ch).result(timeout=0.3)\n"
        "except grpc.FutureTimeoutError:\n"
        "    pass\n"
    )
    proc = _fresh(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    first = proc.stdout.split()
    assert first == ["True", POLLING_IO_EXPERIMENTS]
    assert "Unknown experiment" not in proc.stderr, proc.stderr[-2000:]
    # the check can fail: gRPC reports a name it does not know
    bad = _fresh(code, env_extra={GRPC_EXPERIMENTS_ENV: "-no_such_experiment_x"})
    assert bad.stdout.split() == ["False", "-no_such_experiment_x"]
    assert "Unknown experiment: no_such_experiment_x" in bad.stderr


def test_a_users_setting_is_kept_in_a_fresh_process():
    proc = _fresh("import os\nfrom serving.grpc_io import prefer_polling_io\n"
                  "print(prefer_polling_io(), repr(os.environ['GRPC_EXPERIMENTS']))",
                  env_extra={GRPC_EXPERIMENTS_ENV: ""})
    assert proc.stdout.split() == ["False", "''"], proc.stderr[-2000:]


def test_serving_commands_ask_for_polling_io_and_others_do_not():
    from limaml.cli import build_parser

    parser = build_parser()
    wants = {
        ("serve", "--run", "r"): True,
        ("score", "--run", "r", "--user", "u", "--candidates", "c.jsonl"): True,
        ("bench", "serve"): True,
        ("bench", "train"): False,
        ("run", "--output", "o"): False,
    }
    for argv, want in wants.items():
        args, _ = parser.parse_known_args(list(argv))
        assert bool(getattr(args, "grpc_serving", False)) is want, argv


def test_the_stand_in_process_gets_the_setting(tmp_path):
    """The launcher's environment for a stand-in process carries it (and the user's wins)."""
    from serving.model_server import launch

    env = launch.stand_in_environ({"PATH": "/bin"}, auth_token=None)
    assert env[GRPC_EXPERIMENTS_ENV] == POLLING_IO_EXPERIMENTS
    assert env["PYTHONPATH"].split(os.pathsep)[0] == ROOT
    env = launch.stand_in_environ({GRPC_EXPERIMENTS_ENV: "", "PYTHONPATH": "/x"}, auth_token="t")
    assert env[GRPC_EXPERIMENTS_ENV] == ""
    assert env["PYTHONPATH"].split(os.pathsep) == [ROOT, "/x"]
    assert env[launch.TOKEN_ENV] == "t"


def test_the_ranker_manifest_sets_the_same_experiments():
    with open(os.path.join(ROOT, "kubeflow", "serving", "ranker.yaml"), encoding="utf-8") as fh:
        docs = [d for d in yaml.safe_load_all(fh) if d and d.get("kind") == "Deployment"]
    (container,) = docs[0]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env[GRPC_EXPERIMENTS_ENV] == POLLING_IO_EXPERIMENTS
