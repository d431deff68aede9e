"""Depth and RGB-D spatial reasoning.

    estimator    Depth Anything through transformers; relative -> metric least-squares alignment with residuals
    metrics      AbsRel, RMSE, delta1 (as exact sums, so episodes combine into overall figures)
    noise        a documented noise model of monocular metric depth (for the benchmark's degraded-depth figures)
    pointcloud   RGB-D -> open3d point clouds -> gravity-aligned viewer frame -> objects -> measured boxes
    geometry     intrinsics, lifting depth to points, the gravity-aligned viewer frame, the support plane
    objects      per-object points from segmentation or DBSCAN clusters, and what limits measuring them
    boxes        upright / axis-aligned / oriented boxes of an object's points (ObjectFacts)
    spatial_qa   QA config, answer units, generating the QA records of a frame
    qa_facts     the 3D facts of a frame the answers are read from (measured or true)
    qa_families  question families, phrasings, answers from 3D facts
    qa_scoring   scoring QA records against true facts
    synthesis    one episode -> QA samples (per camera and chosen frame)
    qa_dataset   the on-disk format: webdataset shards, parquet index, summary

True scene facts from the simulator, for scoring, are in ``pipeline.sim.truth``.

Importing this package is cheap: open3d, torch and transformers load inside the functions that need them.
"""
