"""The run directory, on local disk or object storage: stage directories, rows, markers, hashes and the manifest.

    <run_dir>/                       a local path or an fsspec URL (s3://bucket/runs/demo, gs://..., memory://...)
      config.resolved.yaml           the config after --set
      run.log                        the run's log (uploaded at the end of each stage when the run dir is remote)
      stages/NN_<stage>/stage.json   written when the stage starts: its params hash and input hash
      stages/NN_<stage>/episodes/    episodes the stage produced or changed (``episodes.format``)
      stages/NN_<stage>/done/<id>.json  one episode finished (its row): a killed stage redoes only what is missing
      stages/NN_<stage>/rows.jsonl   every row after the stage
      stages/NN_<stage>/_SUCCESS     written last: hashes, artifacts published, counts (JSON)
      manifest.json                  every input episode's fate, stage timings, reports, versions

Every file is published atomically (``episodes.io``); a marker is written only after what it vouches for. Paths in
``rows.jsonl``, the markers and the manifest are relative to the run directory, so a run directory can be moved or
copied (``aws s3 sync``) and still resumed.

Re-running is safe: a stage's *key* is the hash of its name, its params and the key of the stage before it (so a
change anywhere upstream changes every key after it). ``--resume`` reuses a finished stage only when its recorded key
matches, and reuses an unfinished stage's per-episode results only when its ``stage.json`` matches; otherwise the
stage directory is cleared and the stage runs again.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from typing import Any

from episodes import io as fileio
from pipeline.stage import StageParams

SUCCESS, STARTED, ROWS, DONE_DIR = "_SUCCESS", "stage.json", "rows.jsonl", "done"


def params_hash(params: StageParams) -> str:
    return _sha(json.dumps(params.model_dump(mode="json"), sort_keys=True))


def stage_key(name: str, p_hash: str, input_key: str, seed: int) -> str:
    return _sha(json.dumps([name, p_hash, input_key, seed]))


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class RunStore:
    def __init__(self, run_dir: str):
        self.run_dir = fileio.normalize(run_dir)

    # -- paths -------------------------------------------------------------------------------------------------------

    def path(self, *parts: str) -> str:
        return fileio.join(self.run_dir, *parts)

    def stage_dir(self, index: int, name: str) -> str:
        return self.path("stages", f"{index:02d}_{name}")

    def relative(self, path: str) -> str:
        """``path`` relative to the run directory when it lies inside it (as stored in files), else unchanged."""
        prefix = self.run_dir.rstrip("/") + "/"
        return path[len(prefix):] if path.startswith(prefix) else path

    def absolute(self, path: str) -> str:
        if not path or fileio.is_url(path) or path.startswith("/"):
            return path
        return self.path(path)

    # -- json and rows -----------------------------------------------------------------------------------------------

    def write_json(self, path: str, payload: Any) -> None:
        fileio.atomic_write_text(path, json.dumps(payload, indent=1, default=str))

    def read_json(self, path: str) -> Any | None:
        try:
            return json.loads(fileio.read_text(path))
        except FileNotFoundError:
            return None

    def write_rows(self, stage_dir: str, rows: Iterable[dict[str, str]]) -> None:
        text = "".join(json.dumps(self.stored_row(r)) + "\n" for r in rows)
        fileio.atomic_write_text(fileio.join(stage_dir, ROWS), text)

    def read_rows(self, stage_dir: str) -> list[dict[str, str]]:
        text = fileio.read_text(fileio.join(stage_dir, ROWS))
        return [self.loaded_row(json.loads(line)) for line in text.splitlines() if line.strip()]

    def stored_row(self, r: dict[str, str]) -> dict[str, str]:
        return {**r, "path": self.relative(r.get("path", ""))}

    def loaded_row(self, r: dict[str, str]) -> dict[str, str]:
        return {**r, "path": self.absolute(r.get("path", ""))}

    # -- per-episode completion records ------------------------------------------------------------------------------

    def done_rows(self, stage_dir: str) -> dict[str, dict[str, str]]:
        """Rows of the episodes a source already made: episode id -> its row."""
        return {eid: rows[0] for eid, rows in self.done_row_lists(stage_dir).items() if len(rows) == 1}

    def done_row_lists(self, stage_dir: str) -> dict[str, list[dict[str, str]]]:
        """Completion records of a stage (one LIST, then one small read each): input id -> the rows it produced (itself,
        and for a map that fans out, the new episodes)."""
        out = {}
        for path in fileio.listdir(fileio.join(stage_dir, DONE_DIR)):
            if path.endswith(".json"):
                record = self.read_json(path)
                if record is not None:
                    rows = record["rows"] if "rows" in record else [record]
                    out[record["episode_id"]] = [self.loaded_row(r) for r in rows]
        return out

    # -- markers -----------------------------------------------------------------------------------------------------

    def start_stage(self, stage_dir: str, name: str, p_hash: str, input_key: str, fresh: bool) -> None:
        if fresh:
            fileio.remove(stage_dir, recursive=True)
        fileio.makedirs(stage_dir)
        fileio.remove(fileio.join(stage_dir, SUCCESS))
        fileio.remove(fileio.join(stage_dir, "report.json"))  # a report belongs to the run that wrote it
        self.write_json(fileio.join(stage_dir, STARTED), {"stage": name, "params_hash": p_hash,
                                                           "input_key": input_key,
                                                           "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

    def finish_stage(self, stage_dir: str, marker: dict[str, Any]) -> None:
        self.write_json(fileio.join(stage_dir, SUCCESS), marker)

    def success(self, stage_dir: str) -> dict[str, Any] | None:
        marker = self.read_json(fileio.join(stage_dir, SUCCESS))
        return marker if isinstance(marker, dict) else None

    def started(self, stage_dir: str) -> dict[str, Any] | None:
        marker = self.read_json(fileio.join(stage_dir, STARTED))
        return marker if isinstance(marker, dict) else None

    def report(self, stage_dir: str) -> dict[str, Any] | None:
        return self.read_json(fileio.join(stage_dir, "report.json"))

    # -- artifacts ---------------------------------------------------------------------------------------------------

    def store_artifacts(self, artifacts: dict[str, Any]) -> dict[str, Any]:
        return {k: self.relative(v) if isinstance(v, str) else v for k, v in artifacts.items()}

    def load_artifacts(self, artifacts: dict[str, Any]) -> dict[str, Any]:
        return {k: self.absolute(v) if isinstance(v, str) else v for k, v in artifacts.items()}

    def check_writable(self) -> str | None:
        """None when a probe object can be written and removed under the run directory, else what went wrong."""
        probe = self.path(".wmsynth-write-probe")
        try:
            fileio.atomic_write_text(probe, "probe")
            fileio.remove(probe)
        except Exception as exc:  # any backend error (permissions, unknown bucket, no credentials, no network)
            return describe_storage_error(self.run_dir, exc)
        return None


def describe_storage_error(where: str, exc: BaseException) -> str:
    """A one-line, credential-free explanation of a storage failure, with what to do."""
    text = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    lowered = text.lower()
    if "nosuchbucket" in lowered or "bucket does not exist" in lowered or "specified bucket" in lowered:
        hint = "the bucket does not exist (check its name, or create it)"
    elif "credentials" in lowered or "invalidaccesskeyid" in lowered or "signaturedoesnotmatch" in lowered:
        hint = ("no valid credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile; for GCS "
                "GOOGLE_APPLICATION_CREDENTIALS)")
    elif "accessdenied" in lowered or "forbidden" in lowered or "permission" in lowered or "403" in lowered:
        hint = "permission denied (the credentials cannot write there)"
    elif "connect" in lowered or "endpoint" in lowered or "timeout" in lowered or "name or service" in lowered:
        hint = "cannot reach the storage endpoint (check AWS_ENDPOINT_URL / network)"
    elif "protocol" in lowered and "known" in lowered:
        hint = "unknown URL scheme (use s3://, gs://, file://, memory:// or a local path)"
    else:
        hint = "cannot write there"
    return f"{where}: {hint} ({text})"
