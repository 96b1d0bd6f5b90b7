"""A tiny Hugging Face Hub for the tests: just the endpoints huggingface_hub 2.4 and transformers 5.23 call
to create a repo, commit files to it, list it and download from it. Everything lives in memory.

    server = HubServer(tokens={"hf_write": "alice"}).start()   # then HF_ENDPOINT=server.url
    ...
    server.stop()

Protocol (read off huggingface_hub's client code):
- ``POST /api/repos/create``            {name, organization, visibility, type} -> {url}; 409 if it exists.
- ``POST /api/validate-yaml``           README front matter check -> {errors, warnings}.
- ``POST /api/models/{id}/preupload/{rev}``  always answers ``uploadMode: "regular"``, so the client sends every
  file inline (base64) in the commit and no LFS/Xet storage is needed.
- ``POST /api/models/{id}/commit/{rev}`` NDJSON: a header line, then ``file`` / ``deletedFile`` /
  ``deletedFolder`` lines. Applied to a copy of the tree and swapped in at the end: all or nothing.
- ``GET /api/models/{id}[/revision/{rev}]``, ``GET /api/models/{id}/tree/{rev}[/{path}]``,
  ``POST /api/models/{id}/paths-info/{rev}``, ``GET /api/models/{id}/refs``, ``GET /api/whoami-v2``.
- ``HEAD|GET /{id}/resolve/{rev}/{path}`` with ``X-Repo-Commit``, ``ETag`` and ``Content-Length``; errors carry
  ``X-Error-Code`` (RepoNotFound, RevisionNotFound, EntryNotFound) as the real Hub does.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"


def git_hash(data: bytes) -> str:
    """The git blob id of ``data`` (what the Hub calls a regular file's oid)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    oid: str
    title: str
    files: dict[str, bytes]
    date: str


@dataclass
class Repo:
    repo_id: str
    owner: str
    private: bool
    commits: list[Commit] = field(default_factory=list)

    @property
    def head(self) -> Commit:
        return self.commits[-1]

    def at(self, revision: str) -> Commit | None:
        if revision in ("main", "refs/heads/main"):
            return self.head
        return next((c for c in reversed(self.commits) if len(revision) >= 7 and c.oid.startswith(revision)), None)

    def commit(self, title: str, files: dict[str, bytes]) -> Commit:
        parent = self.commits[-1].oid if self.commits else ""
        digest = hashlib.sha1(json.dumps([parent, title, sorted((p, git_hash(d)) for p, d in files.items())])
                              .encode()).hexdigest()
        self.commits.append(Commit(digest, title, files, _now()))
        return self.commits[-1]


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, commit: str | None = None,
                 **extra):
        super().__init__(message)
        self.status, self.message, self.code, self.commit, self.extra = status, message, code, commit, extra


class HubState:
    """Repos, tokens, a request log and one fault switch (``fail_next_commit``) for the atomicity test."""

    def __init__(self, tokens: dict[str, str]):
        self.tokens = dict(tokens)  # token -> user name; every token may write to its user's namespace
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.fail_next_commit = False
        self.lock = threading.Lock()

    def user(self, headers, required: bool = False) -> str | None:
        auth = headers.get("Authorization") or ""
        token = auth[7:] if auth.startswith("Bearer ") else None
        if token is None:
            if required:
                raise HubError(401, "Authorization header is missing: a token is required")
            return None
        if token not in self.tokens:
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.tokens[token]

    def repo(self, repo_id: str, user: str | None, write: bool = False) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and user != repo.owner):
            raise HubError(404, "Repository not found", "RepoNotFound")
        if write and user != repo.owner:
            raise HubError(403, f"You don't have the rights to write to {repo_id}")
        return repo


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, *args):  # keep pytest output clean
        pass

    # ----- dispatch --------------------------------------------------------------------------------------
    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        state = self.server.state
        url = urlsplit(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else b""
        state.requests.append((method, path))
        routes = [
            ("GET", r"/api/whoami-v2", self.whoami),
            ("POST", r"/api/repos/create", self.create_repo),
            ("POST", r"/api/validate-yaml", self.validate_yaml),
            ("POST", r"/api/models/(?P<repo>[^/]+/[^/]+)/preupload/(?P<rev>[^/]+)", self.preupload),
            ("POST", r"/api/models/(?P<repo>[^/]+/[^/]+)/commit/(?P<rev>[^/]+)", self.commit),
            ("POST", r"/api/models/(?P<repo>[^/]+/[^/]+)/paths-info/(?P<rev>[^/]+)", self.paths_info),
            ("GET", r"/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<sub>.+))?", self.tree),
            ("GET", r"/api/models/(?P<repo>[^/]+/[^/]+)/refs", self.refs),
            ("GET", r"/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?", self.model_info),
            ("GET", r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)", self.resolve),
            ("HEAD", r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)", self.resolve),
        ]
        try:
            for verb, pattern, handler in routes:
                match = re.fullmatch(pattern, path)
                if verb == method and match:
                    with state.lock:
                        handler(method=method, body=body, query=query, **match.groupdict())
                    return
            raise HubError(404, f"no route for {method} {path}")
        except HubError as err:
            headers = {"X-Error-Message": err.message}
            if err.code:
                headers["X-Error-Code"] = err.code
            if err.commit:
                headers["X-Repo-Commit"] = err.commit
            self._send(err.status, {"error": err.message, **err.extra}, headers, head=method == "HEAD")

    def _send(self, status: int, payload, headers: dict | None = None, head: bool = False) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        if not isinstance(payload, bytes):
            self.send_header("Content-Type", "application/json")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head:
            self.wfile.write(data)

    # ----- account and repos -----------------------------------------------------------------------------
    def whoami(self, **_):
        user = self.server.state.user(self.headers, required=True)
        self._send(200, {"type": "user", "name": user, "fullname": user, "orgs": [],
                         "auth": {"type": "access_token", "accessToken": {"displayName": "tests", "role": "write"}}})

    def create_repo(self, body: bytes, **_):
        state = self.server.state
        user = state.user(self.headers, required=True)
        payload = json.loads(body)
        name, namespace = payload.get("name") or "", payload.get("organization") or user
        if payload.get("type", "model") != "model":
            raise HubError(400, "this test Hub only holds model repos")
        if not NAME_RE.match(name) or "--" in name or ".." in name or not NAME_RE.match(namespace):
            raise HubError(400, f"invalid repo name {namespace}/{name}")
        if namespace != user:
            raise HubError(403, f"You don't have the rights to create a model under the namespace {namespace!r}")
        repo_id = f"{namespace}/{name}"
        url = f"{self.server.url}/{repo_id}"
        if repo_id in state.repos:
            raise HubError(409, "You already created this model repo", url=url)  # the client reads the url
        repo = Repo(repo_id, user, payload.get("visibility") == "private")
        repo.commit("initial commit", {".gitattributes": GITATTRIBUTES})
        state.repos[repo_id] = repo
        self._send(200, {"url": url, "name": repo_id, "id": repo_id})

    def validate_yaml(self, body: bytes, **_):
        content = json.loads(body)["content"]
        match = re.match(r"^---\n(.*?)\n---\n", content, flags=re.DOTALL)
        try:
            meta = yaml.safe_load(match.group(1)) if match else {}
        except yaml.YAMLError as err:
            self._send(400, {"errors": [{"message": f"invalid YAML: {err}"}], "warnings": []})
            return
        if not isinstance(meta, dict):
            self._send(400, {"errors": [{"message": "metadata must be a mapping"}], "warnings": []})
            return
        self._send(200, {"errors": [], "warnings": []})

    # ----- commits ---------------------------------------------------------------------------------------
    def preupload(self, repo: str, rev: str, body: bytes, **_):
        state = self.server.state
        target = state.repo(repo, state.user(self.headers, required=True), write=True)
        head = self._revision(target, rev)
        files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                  "oid": git_hash(head.files[f["path"]]) if f["path"] in head.files else None}
                 for f in json.loads(body)["files"]]
        self._send(200, {"files": files, "commitOid": head.oid})

    def commit(self, repo: str, rev: str, body: bytes, **_):
        state = self.server.state
        target = state.repo(repo, state.user(self.headers, required=True), write=True)
        if rev != "main":
            raise HubError(400, "this test Hub only commits to main")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "a commit starts with its header line")
        header = lines[0]["value"]
        parent = header.get("parentCommit")
        if parent and not target.head.oid.startswith(parent):
            raise HubError(412, f"parent commit {parent} is not the head of main ({target.head.oid})")
        files = dict(target.head.files)  # work on a copy: nothing changes unless every line applies
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            path = value["path"]
            if key == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, f"unsupported encoding for {path}")
                files[path] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                if path not in files:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                del files[path]
            elif key == "deletedFolder":
                prefix = path.rstrip("/") + "/"
                for name in [p for p in files if p.startswith(prefix)]:
                    del files[name]
            else:  # lfsFile, copies: never requested, preupload always answers "regular"
                raise HubError(400, f"unsupported commit operation {key!r}")
        if state.fail_next_commit:
            state.fail_next_commit = False
            raise HubError(500, "Internal Error - the commit was rejected (fault injected by the test)")
        new = target.commit(header.get("summary") or "update", files)
        self._send(200, {"success": True, "commitOid": new.oid, "commitMessage": new.title,
                         "commitUrl": f"{self.server.url}/{repo}/commit/{new.oid}", "hookOutput": "",
                         "pullRequestUrl": None})

    # ----- reading ---------------------------------------------------------------------------------------
    def _revision(self, repo: Repo, rev: str | None) -> Commit:
        commit = repo.at(rev or "main")
        if commit is None:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return commit

    def _readable(self, repo_id: str) -> Repo:
        state = self.server.state
        return state.repo(repo_id, state.user(self.headers))

    def model_info(self, repo: str, rev: str | None = None, **_):
        target = self._readable(repo)
        commit = self._revision(target, rev)
        card = commit.files.get("README.md", b"").decode()
        match = re.match(r"^---\n(.*?)\n---\n", card, flags=re.DOTALL)
        card_data = yaml.safe_load(match.group(1)) if match else None
        try:
            config = json.loads(commit.files.get("config.json", b"{}"))
        except ValueError:
            config = {}
        self._send(200, {
            "_id": target.repo_id, "id": target.repo_id, "modelId": target.repo_id, "author": target.owner,
            "sha": commit.oid, "lastModified": commit.date, "createdAt": target.commits[0].date,
            "private": target.private, "gated": False, "disabled": False, "downloads": 0, "likes": 0,
            "library_name": (card_data or {}).get("library_name"), "tags": (card_data or {}).get("tags", []),
            "cardData": card_data, "config": {k: config[k] for k in ("model_type", "architectures", "auto_map")
                                              if k in config},
            "siblings": [{"rfilename": p} for p in sorted(commit.files)],
        })

    def _entries(self, commit: Commit, paths) -> list[dict]:
        entries = []
        for p in paths:
            if p in commit.files:
                entries.append({"type": "file", "oid": git_hash(commit.files[p]), "size": len(commit.files[p]),
                                "path": p})
            else:
                entries.append({"type": "directory", "oid": hashlib.sha1(p.encode()).hexdigest(), "size": 0,
                                "path": p})
        return entries

    def tree(self, repo: str, rev: str, sub: str | None = None, query=None, **_):
        commit = self._revision(self._readable(repo), rev)
        recursive = (query.get("recursive") or ["false"])[0].lower() in ("1", "true")
        prefix = sub.strip("/") + "/" if sub else ""
        below = [p[len(prefix):] for p in sorted(commit.files) if p.startswith(prefix)]
        if sub and not below:
            raise HubError(404, f"{sub} does not exist on {rev}", "EntryNotFound", commit.oid)
        names = set()
        for rel in below:
            parts = rel.split("/")
            names.update("/".join(parts[:i]) for i in range(1, len(parts) + 1) if recursive or i == 1)
        self._send(200, self._entries(commit, sorted(prefix + n for n in names)))

    def paths_info(self, repo: str, rev: str, body: bytes, **_):
        commit = self._revision(self._readable(repo), rev)
        form = parse_qs(body.decode())
        paths = form.get("paths") or []
        if not paths and body.startswith(b"{"):
            paths = json.loads(body).get("paths", [])
        folders = {"/".join(p.split("/")[:i]) for p in commit.files for i in range(1, p.count("/") + 1)}
        self._send(200, self._entries(commit, [p for p in paths if p in commit.files or p in folders]))

    def refs(self, repo: str, **_):
        target = self._readable(repo)
        self._send(200, {"branches": [{"name": "main", "ref": "refs/heads/main", "targetCommit": target.head.oid}],
                         "tags": [], "converts": []})

    def resolve(self, repo: str, rev: str, file: str, method: str, **_):
        commit = self._revision(self._readable(repo), rev)
        if file not in commit.files:
            raise HubError(404, "Entry not found", "EntryNotFound", commit.oid)
        data = commit.files[file]
        status, headers = 200, {"X-Repo-Commit": commit.oid, "ETag": f'"{git_hash(data)}"',
                                "Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
        byte_range = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
        if byte_range:
            start = int(byte_range.group(1))
            end = int(byte_range.group(2)) if byte_range.group(2) else len(data) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            status, data = 206, data[start:end + 1]
        self._send(status, data, headers, head=method == "HEAD")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: HubState
    url: str


class HubServer:
    """The test Hub on 127.0.0.1 (a free port), served from a daemon thread."""

    def __init__(self, tokens: dict[str, str] | None = None, port: int = 0):
        self.state = HubState(tokens or {})
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.state = self.state
        self.url = self._server.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> "HubServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def reset(self) -> None:
        """Forget every repo and fault (between tests)."""
        self.state.repos.clear()
        self.state.fail_next_commit = False

    def files(self, repo_id: str) -> dict[str, bytes]:
        """The files at the head of ``repo_id`` (what a client would download)."""
        return dict(self.state.repos[repo_id].head.files)


if __name__ == "__main__":  # a manual playground: python tests/hub_server.py, then HF_ENDPOINT=<url> HF_TOKEN=hf_dev
    hub = HubServer({"hf_dev": "dev"}, port=8765).start()
    print(f"test Hub on {hub.url}; token hf_dev (user 'dev'); Ctrl-C to stop", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        hub.stop()
