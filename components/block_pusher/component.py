"""BlockPusher component: push only when the model is blessed."""
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts

from components.block_pusher.pin import open_bigtable_store, pin_pushed_version
from components.block_pusher.push import push
from components.common.model_version import model_version


@component
def BlockPusher(  # pylint: disable=invalid-name
        model: InputArtifact[standard_artifacts.Model],
        model_blessing: InputArtifact[standard_artifacts.ModelBlessing],
        pushed_model: OutputArtifact[standard_artifacts.PushedModel],
        serving_base: Parameter[str],
        embedding_table: Parameter[str] = "") -> None:
    """Pushes the global block to ``<serving_base>/<version>/`` when Evaluator blessed the model.

    With ``embedding_table`` (``<project>/<instance>/<table>``, the Bigtable table MEG writes),
    the version is first pinned there as served, so store retention never collects its
    embeddings (components/block_pusher/pin.py).
    """
    blessed = model_blessing.get_int_custom_property("blessed") == 1
    pushed_model.set_int_custom_property("pushed", 0)
    if not blessed:
        print(f"[push] model {model.uri} not blessed by the Evaluator: nothing pushed")
        return
    version = model_version(model)
    if embedding_table:
        pins = pin_pushed_version(open_bigtable_store(embedding_table), version)
        print(f"[push] embeddings of version {version} pinned as served in {embedding_table} "
              f"(rollback: {pins.previous})")
    target = push(f"{model.uri}/Format-Serving", serving_base, version)
    pushed_model.set_int_custom_property("pushed", 1)
    pushed_model.set_string_custom_property("pushed_destination", target)
    pushed_model.set_string_custom_property("pushed_version", version)
    print(f"[push] model version {version} pushed to {target}")
