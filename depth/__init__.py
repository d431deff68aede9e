"""Depth and RGB-D spatial reasoning.

    estimator    Depth Anything through transformers; relative -> metric least-squares alignment with residuals
    metrics      AbsRel, RMSE, delta1 (as exact sums, so episodes combine into overall figures)
    noise        a documented noise model of monocular metric depth (for the benchmark's degraded-depth figures)
    pointcloud   RGB-D -> open3d point clouds -> gravity-aligned viewer frame -> objects -> measured boxes
    spatial_qa   question families, phrasings, answers from 3D facts, scoring against truth
    synthesis    one episode -> QA samples (per camera and chosen frame)
    qa_dataset   the on-disk format: webdataset shards, parquet index, summary
    sim_truth    true scene facts from the simulator's object poses and sizes (for scoring)

Importing this package is cheap: open3d, torch and transformers load inside the functions that need them.
"""
