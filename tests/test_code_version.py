"""pipeline/code_version.py: the code fingerprint, and that it really is part of the cache key."""
from __future__ import annotations

import os
import shutil

import pytest

from pipeline.code_version import PIPELINE_PACKAGES, source_fingerprint


def _tree(root) -> str:
    for package in ("alpha", "beta"):
        os.makedirs(os.path.join(root, package, "sub"))
        with open(os.path.join(root, package, "__init__.py"), "w") as fh:
            fh.write(f"NAME = {package!r}\n")
        with open(os.path.join(root, package, "sub", "mod.py"), "w") as fh:
            fh.write("X = 1\n")
    with open(os.path.join(root, "alpha", "schema.pbtxt"), "w") as fh:
        fh.write("feature {}\n")
    return str(root)


def test_fingerprint_follows_the_sources_and_nothing_else(tmp_path):
    root = _tree(tmp_path / "src")
    fp = source_fingerprint(root, ("alpha", "beta"))
    assert len(fp) == 16 and fp == source_fingerprint(root, ("beta", "alpha"))
    # caches, notes and other packages do not count
    os.makedirs(os.path.join(root, "alpha", "__pycache__"))
    with open(os.path.join(root, "alpha", "__pycache__", "mod.cpython-310.pyc"), "wb") as fh:
        fh.write(b"\0bytecode")
    with open(os.path.join(root, "beta", "notes.txt"), "w") as fh:
        fh.write("scratch")
    os.makedirs(os.path.join(root, "gamma"))
    with open(os.path.join(root, "gamma", "g.py"), "w") as fh:
        fh.write("Y = 2\n")
    assert source_fingerprint(root, ("alpha", "beta")) == fp
    # an edit, a schema edit, a rename and a new file each change it
    seen = {fp}
    with open(os.path.join(root, "beta", "sub", "mod.py"), "w") as fh:
        fh.write("X = 2\n")
    seen.add(source_fingerprint(root, ("alpha", "beta")))
    with open(os.path.join(root, "alpha", "schema.pbtxt"), "a") as fh:
        fh.write("feature {}\n")
    seen.add(source_fingerprint(root, ("alpha", "beta")))
    os.rename(os.path.join(root, "beta", "sub", "mod.py"), os.path.join(root, "beta", "sub", "m2.py"))
    seen.add(source_fingerprint(root, ("alpha", "beta")))
    with open(os.path.join(root, "alpha", "new.py"), "w") as fh:
        fh.write("")
    seen.add(source_fingerprint(root, ("alpha", "beta")))
    assert len(seen) == 5
    with pytest.raises(FileNotFoundError, match="delta"):
        source_fingerprint(root, ("alpha", "delta"))


def test_the_project_fingerprint_covers_the_pipeline_packages(tmp_path):
    """A copy of the project's packages has the installed fingerprint; editing trainer code in
    the copy changes it."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for package in PIPELINE_PACKAGES:
        shutil.copytree(os.path.join(here, package), os.path.join(tmp_path, package),
                        ignore=shutil.ignore_patterns("__pycache__"))
    assert source_fingerprint(str(tmp_path)) == source_fingerprint()
    with open(os.path.join(tmp_path, "trainer", "export.py"), "a") as fh:
        fh.write("\n# changed\n")
    assert source_fingerprint(str(tmp_path)) != source_fingerprint()


def test_changed_code_reruns_example_gen_and_the_schema_import_and_unchanged_code_hits_the_cache(
        tmp_path):
    """Three local runs of ProtocolExampleGen and CuratedSchemaGen (same data, same schema path;
    LocalDagRunner, SQLite ML Metadata): code version A executes both, A again serves both from
    the cache, B executes both again. TFX's own ImportSchemaGen, keyed on the path, stays cached."""
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2
    from tfx import v1 as tfx

    from components.curated_schema_gen.component import CuratedSchemaGen
    from components.protocol_example_gen.component import ProtocolExampleGen
    from limaml.config import LimamlConfig, ProtocolConfig
    from limaml.data import prepare, synthetic
    from pipeline.settings import beam_args
    from schema import features as F

    config = LimamlConfig(dataset="synthetic",
                          protocol=ProtocolConfig(name="cutoff", cutoff_quantile=0.75))
    data_dir = str(tmp_path / "data")
    prepare.prepare("synthetic", data_dir, protocol=config.protocol,
                    synthetic_cfg=synthetic.SyntheticConfig(num_users=40, num_items=20,
                                                            mean_interactions=8, seed=5))
    db = str(tmp_path / "metadata.sqlite")
    connection = tfx.orchestration.metadata.sqlite_metadata_connection_config(db)
    runs = []
    for version in ("code-a", "code-a", "code-b"):
        components = [
            ProtocolExampleGen(input_base=data_dir, config=config, code_version=version),
            CuratedSchemaGen(schema_file=F.schema_path(), code_version=version),
            tfx.components.ImportSchemaGen(schema_file=F.schema_path()).with_id("PlainSchema")]
        store = metadata_store.MetadataStore(connection)
        before = len(store.get_executions())
        tfx.orchestration.LocalDagRunner().run(tfx.dsl.Pipeline(
            pipeline_name="code-version", pipeline_root=str(tmp_path / "root"),
            components=components, enable_cache=True, beam_pipeline_args=beam_args(),
            metadata_connection_config=connection))
        store = metadata_store.MetadataStore(connection)
        types = {t.id: t.name for t in store.get_execution_types()}
        runs.append({types[e.type_id].rsplit(".", 1)[-1]: e.last_known_state
                     for e in store.get_executions()[before:]})
    done, cached = metadata_store_pb2.Execution.COMPLETE, metadata_store_pb2.Execution.CACHED
    for node in ("ProtocolExampleGen", "CuratedSchemaGen"):
        assert [r[node] for r in runs] == [done, cached, done], (node, runs)
    assert [r["ImportSchemaGen"] for r in runs] == [done, cached, cached]
