"""How visible is each action dimension in the frames? A supervised upper bound for the latent-action probe.

    .venv/bin/python benchmarks/inverse_dynamics_bound.py [--cameras oblique,top,wrist] [--steps 2500]

Trains the latent-action encoder architecture (``latent_actions.model.LatentActionEncoder``) as a plain supervised
inverse-dynamics model, (s_t, s_t+1) -> a_t, on *every* training episode of the ``latent_world_model`` benchmark's
data (same cache, same held-out episodes), and prints the held-out R2 per action dimension as the last line (JSON).
A dimension this model cannot predict with all labels is one no latent action learned from these frames can be
expected to carry: the probe of ``benchmarks/latent_world_model.py`` should be read against these figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from latent_world_model import DataSpec, make_data  # noqa: E402

logger = logging.getLogger("benchmarks.inverse_dynamics_bound")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", default=",".join(DataSpec().cameras), help="subset of the benchmark's cameras")
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="processes generating episodes (first run only)")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "wmsynth-bench-lwm")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)

    import torch

    from latent_actions.model import LatentActionConfig, LatentActionEncoder
    from pipeline.sim.spec import ACTION_NAMES
    from world_model.data import PairData
    from world_model.metrics import r2_per_dim

    spec = DataSpec()
    cameras = tuple(args.cameras.split(","))
    unknown = set(cameras) - set(spec.cameras)
    if unknown:
        parser.error(f"--cameras: {sorted(unknown)} not in the benchmark data ({', '.join(spec.cameras)})")
    torch.manual_seed(spec.seed)
    torch.set_num_threads(args.threads)
    train_paths, test_paths, _ = make_data(spec, args.cache_dir, args.workers)
    train = PairData.from_episodes(train_paths, cameras, spec.image_size)
    test = PairData.from_episodes(test_paths, cameras, spec.image_size)
    a_train, _ = train.pair_actions(np.arange(len(train)))
    a_test, _ = test.pair_actions(np.arange(len(test)))
    mean, std = a_train.mean(0), a_train.std(0) + 1e-6
    encoder = LatentActionEncoder(LatentActionConfig(in_channels=3 * len(cameras), image_size=spec.image_size),
                                  a_train.shape[1])
    optimizer = torch.optim.AdamW(encoder.parameters(), args.lr, weight_decay=1e-4)
    rng = np.random.default_rng(spec.seed)
    start = time.process_time()
    for step in range(args.steps):
        index = rng.integers(0, len(train), args.batch_size)
        batch = train.batch(index)
        target = torch.from_numpy((a_train[index] - mean) / std)
        loss = (encoder(batch["s_t"], batch["s_next"]) - target).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 250 == 0:
            logger.info("step %d: loss %.4f (%.0f CPU-s)", step, loss.item(), time.process_time() - start)
    encoder.eval()
    preds = []
    with torch.no_grad():
        for i in range(0, len(test), 128):
            batch = test.batch(np.arange(i, min(i + 128, len(test))))
            preds.append(encoder(batch["s_t"], batch["s_next"]).numpy())
    pred = np.concatenate(preds) * std + mean
    r2 = [round(float(v), 4) for v in r2_per_dim(pred, a_test)]
    print(json.dumps({"cameras": list(cameras), "action_names": list(ACTION_NAMES[: len(r2)]),
                      "supervised_r2_per_dim": r2, "supervised_r2_mean": round(float(np.mean(r2)), 4),
                      "train_episodes": train.num_episodes, "test_episodes": test.num_episodes,
                      "steps": args.steps, "train_cpu_s": round(time.process_time() - start, 1)}))


if __name__ == "__main__":
    main()
