"""LiMAML trainer.

Modules:
    layout: FeatureLayout (meta vs global features, widths) from schema ENCODINGS + vocab sizes.
    model: meta block ``meta_forward`` (batched over tasks), global block, ``LimamlModel``.
    maml: batched MAML inner loop (``adapt``), outer loss, ``MamlTrainer`` (Adam, tf.distribute).
    finetune: MEG kernel ``generate_meta_embeddings`` and ``cold_start_embedding``.
    baselines: global DNN and wide&deep trained on flat examples.
    tasks / task_record: padded support/query tasks (numpy builder, tf.Example format).
    local_encoder / preprocessing: numpy encoder and the Transform ``preprocessing_fn``.
    export / run: SavedModel export and the TFX entry points ``run_fn`` / ``baseline_run_fn``.
    evaluate / experiment: AUC helpers and a LiMAML-vs-baselines comparison without TFX.
"""
