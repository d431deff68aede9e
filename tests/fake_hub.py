"""A stand-in for the Hugging Face Hub at its HTTP boundary: a local server that answers the part of the Hub API that
huggingface_hub's upload path uses (create_repo, create_branch, preupload, LFS batch + basic PUT, commit, revision
info, tags) and records every request. Set ``HF_ENDPOINT`` to ``hub.url`` (and ``HF_HUB_DISABLE_XET=1``: the Xet
upload protocol is a separate storage service this stand-in does not speak; the Hub itself accepts both).

State is kept the way the Hub keeps it: per repo, per branch, path -> (kind, oid, size, content), LFS objects by
sha256 (so content the Hub already has is not asked for again), tags -> commit.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlparse

import yaml

LFS_SUFFIXES = (".parquet", ".mp4", ".tar", ".png", ".jpg", ".safetensors")


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    repo_type: str
    private: bool | None
    branches: dict[str, dict[str, dict[str, Any]]] = field(default_factory=lambda: {"main": {}})
    heads: dict[str, str] = field(default_factory=lambda: {"main": "0" * 40})
    tags: dict[str, str] = field(default_factory=dict)
    commits: list[dict[str, Any]] = field(default_factory=list)


class FakeHub:
    def __init__(self):
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}  # sha256 -> content
        self.requests: list[dict[str, Any]] = []  # method, path, json body (no headers: the token stays out)
        self.auth_headers: list[str | None] = []
        self.fail_commits = 0  # answer this many commits with HTTP 500 (an upload interrupted before its commit)
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def files(self, repo_id: str, branch: str = "main") -> dict[str, bytes]:
        """path -> content of a branch, as a download would give it."""
        out = {}
        for path, entry in self.repos[repo_id].branches[branch].items():
            out[path] = self.lfs[entry["oid"]] if entry["kind"] == "lfs" else entry["content"]
        return out

    def calls(self, method: str, contains: str = "") -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == method and contains in r["path"]]

    def lfs_puts(self) -> list[str]:
        return [r["path"].rsplit("/", 1)[-1] for r in self.calls("PUT", "/lfs-upload/")]

    # -- the API -----------------------------------------------------------------------------------------------------

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, Any, dict[str, str]]:
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if method == "POST" and path == "/api/repos/create":
            payload = json.loads(body)
            repo_id = f"{payload['organization']}/{payload['name']}"
            if repo_id in self.repos:
                return 409, {"error": "You already created this dataset repo", "url": self._repo_url(repo_id)}, {}
            self.repos[repo_id] = Repo(payload.get("type") or "model", payload.get("visibility") == "private")
            return 200, {"url": self._repo_url(repo_id), "name": repo_id}, {}
        if method == "POST" and path == "/api/validate-yaml":  # the card's front matter, before the commit
            return self._validate_yaml(json.loads(body))
        if method == "PUT" and parts[0] == "lfs-upload":
            if hashlib.sha256(body).hexdigest() != parts[1]:
                return 400, {"error": "sha256 mismatch"}, {}
            self.lfs[parts[1]] = body
            return 200, {}, {}
        if method == "POST" and parts[0] == "datasets" and path.endswith(".git/info/lfs/objects/batch"):
            return self._lfs_batch(f"{parts[1]}/{parts[2].removesuffix('.git')}", json.loads(body))
        if parts[:2] != ["api", "datasets"] or len(parts) < 5:
            return 404, {"error": f"not implemented by the fake hub: {method} {path}"}, {}
        repo_id, action, rest = f"{parts[2]}/{parts[3]}", parts[4], "/".join(parts[5:])
        repo = self.repos.get(repo_id)
        if repo is None:
            return 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
        if method == "POST" and action == "branch":
            if rest in repo.branches:
                return 409, {"error": "Reference already exists"}, {}
            source = json.loads(body or b"{}").get("startingPoint") or "main"
            repo.branches[rest] = dict(repo.branches[source])
            repo.heads[rest] = repo.heads[source]
            return 200, {}, {}
        if method == "POST" and action == "preupload":
            return 200, {"files": [self._preupload(repo, rest, f) for f in json.loads(body)["files"]]}, {}
        if method == "POST" and action == "commit":
            return self._commit(repo_id, repo, rest, body)
        if method == "GET" and action == "revision":
            return 200, self._info(repo_id, repo, rest), {}
        if method == "DELETE" and action == "tag":
            if rest not in repo.tags:
                return 404, {"error": f"Invalid rev id: {rest}"}, {"X-Error-Code": "RevisionNotFound"}
            del repo.tags[rest]
            return 200, {}, {}
        if method == "POST" and action == "tag":
            tag = json.loads(body)["tag"]
            if tag in repo.tags:
                return 409, {"error": "Tag already exists"}, {}
            repo.tags[tag] = repo.heads[rest]
            return 200, {}, {}
        return 404, {"error": f"not implemented by the fake hub: {method} {path}"}, {}

    def _validate_yaml(self, payload: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        from pipeline.dataset_card import HUB_LICENSES, read_front_matter

        try:
            front = read_front_matter(payload["content"])
        except (ValueError, yaml.YAMLError) as exc:
            return 400, {"errors": [{"message": f"invalid YAML: {exc}"}], "warnings": []}, {}
        if front.get("license") not in HUB_LICENSES:
            return 400, {"errors": [{"message": f'"license" must be one of the Hub licences, got '
                                                f'{front.get("license")!r}'}], "warnings": []}, {}
        return 200, {"errors": [], "warnings": []}, {}

    def _repo_url(self, repo_id: str) -> str:
        return f"{self.url}/datasets/{repo_id}"

    def _preupload(self, repo: Repo, branch: str, file: dict[str, Any]) -> dict[str, Any]:
        lfs = file["path"].endswith(LFS_SUFFIXES) or file["size"] > 10 * 1024**2
        existing = repo.branches.get(branch, {}).get(file["path"])
        return {"path": file["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                "oid": existing["oid"] if existing else None}

    def _lfs_batch(self, repo_id: str, payload: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        objects = []
        for obj in payload["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.lfs:  # the Hub has it already: no action, the client skips the upload
                entry["actions"] = {"upload": {"href": f"{self.url}/lfs-upload/{obj['oid']}"}}
            objects.append(entry)
        return 200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}, {}

    def _commit(self, repo_id: str, repo: Repo, branch: str, body: bytes) -> tuple[int, Any, dict[str, str]]:
        if self.fail_commits > 0:
            self.fail_commits -= 1
            return 500, {"error": "Internal Error - We're working hard to fix this as soon as possible!"}, {}
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        files = dict(repo.branches[branch])
        for line in lines[1:]:
            value = line["value"]
            if line["key"] == "file":
                content = base64.b64decode(value["content"])
                files[value["path"]] = {"kind": "regular", "oid": git_blob_oid(content), "size": len(content),
                                        "content": content}
            elif line["key"] == "lfsFile":
                if value["oid"] not in self.lfs:
                    return 422, {"error": f"LFS object {value['oid']} was never uploaded"}, {}
                files[value["path"]] = {"kind": "lfs", "oid": value["oid"], "size": value["size"]}
            elif line["key"] in ("deletedFile", "deletedFolder"):
                files = {p: e for p, e in files.items() if p != value["path"]
                         and not p.startswith(value["path"].rstrip("/") + "/")}
        oid = hashlib.sha1(json.dumps([repo.heads[branch], sorted(files)], default=str).encode()
                           + body).hexdigest()
        repo.branches[branch], repo.heads[branch] = files, oid
        repo.commits.append({"oid": oid, "branch": branch, "header": lines[0]["value"],
                             "paths": [line["value"]["path"] for line in lines[1:]]})
        return 200, {"commitUrl": f"{self._repo_url(repo_id)}/commit/{oid}", "commitOid": oid,
                     "pullRequestUrl": None}, {}

    def _info(self, repo_id: str, repo: Repo, revision: str) -> dict[str, Any]:
        branch = revision if revision in repo.branches else "main"
        return {"_id": repo_id, "id": repo_id, "private": bool(repo.private), "sha": repo.heads[branch],
                "siblings": [{"rfilename": p} for p in sorted(repo.branches[branch])], "tags": [],
                "downloads": 0, "likes": 0, "disabled": False, "gated": False,
                "lastModified": "2026-01-01T00:00:00.000Z", "createdAt": "2026-01-01T00:00:00.000Z"}


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            path = urlparse(self.path).path
            with hub.lock:
                record: dict[str, Any] = {"method": self.command, "path": path, "size": len(body)}
                if self.headers.get("Content-Type", "").startswith("application/json") and body:
                    record["json"] = json.loads(body)
                elif self.headers.get("Content-Type", "").startswith("application/x-ndjson"):
                    record["ndjson"] = [json.loads(line) for line in body.splitlines() if line.strip()]
                hub.requests.append(record)
                hub.auth_headers.append(self.headers.get("Authorization"))
                status, payload, headers = hub.handle(self.command, path, body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _serve

        def log_message(self, *args) -> None:  # quiet
            pass

    return Handler
