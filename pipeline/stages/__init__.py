"""Every stage module; importing this package registers them all (see pipeline.stage.REGISTRY)."""

from pipeline.stages import (  # noqa: F401
    depth,
    evaluate_world_model,
    filter_trajectories,
    generate_tabletop,
    ingest_lerobot,
    ingest_videos,
    label_actions,
    rollout,
    synthesize_qa,
    train_evaluators,
    train_world_model,
    write_lerobot,
)
