"""A local HTTP server that plays the Hugging Face hub for ``huggingface_hub``.

It serves directories as model repos under made-up ids — the model-info API
(with file sizes and LFS SHA-256), ``resolve`` downloads, and the ``HEAD`` of a
file that ``huggingface_hub``'s own downloader asks first — and counts every
download per file. It can be told to
be slow, to fail a file, or to cut a file's download half-way. Point a process
at it with ``HF_ENDPOINT=hub.url``.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import unquote, urlsplit

# Files at least this large are listed as LFS files, with a SHA-256, as the hub does.
_LFS_THRESHOLD = 10_000
_CHUNK = 64 * 1024


@dataclass
class _Repo:
    root: Path
    commit: str
    files: dict[str, Path]
    sha256: dict[str, str]


@dataclass
class Behaviour:
    """What the hub does to downloads; change it between (or during) fetches."""

    seconds_per_chunk: float = 0.0  # slowness of every download, per 64 KiB
    fail: set[str] = field(default_factory=set)  # files answered with 500
    cut: set[str] = field(default_factory=set)  # files whose connection drops half-way
    corrupt: set[str] = field(default_factory=set)  # files served with one byte changed
    # Set while a cut download is half sent and the server waits to drop it.
    cut_reached: threading.Event = field(default_factory=threading.Event)
    release_cut: threading.Event = field(default_factory=threading.Event)


class FakeHub:
    def __init__(self, repos: dict[str, Path]) -> None:
        self._repos = {repo_id: _scan(root) for repo_id, root in repos.items()}
        self.behaviour = Behaviour()
        self._downloads: Counter[tuple[str, str]] = Counter()
        self._info_requests = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def commit(self, repo_id: str) -> str:
        return self._repos[repo_id].commit

    def files(self, repo_id: str) -> list[str]:
        return sorted(self._repos[repo_id].files)

    def downloads(self) -> Counter[tuple[str, str]]:
        with self._lock:
            return Counter(self._downloads)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.behaviour.release_cut.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    # -- the routes -----------------------------------------------------------------

    def _model_info(self, repo_id: str, revision: str) -> tuple[int, dict[str, str], bytes]:
        repo = self._repos.get(repo_id)
        if repo is None:
            return _error(404, "RepoNotFound", f"Repository {repo_id} not found")
        if revision not in ("main", repo.commit):
            return _error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        siblings = []
        for name, path in sorted(repo.files.items()):
            size = path.stat().st_size
            sibling: dict[str, object] = {"rfilename": name, "size": size, "blobId": "0" * 40}
            if size >= _LFS_THRESHOLD:
                sibling["lfs"] = {"size": size, "sha256": repo.sha256[name], "pointerSize": 134}
            siblings.append(sibling)
        body = {"id": repo_id, "modelId": repo_id, "sha": repo.commit, "siblings": siblings}
        return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                path = unquote(urlsplit(self.path).path)
                if path.startswith("/api/models/") and "/tree/" in path:
                    self._tree(path.removeprefix("/api/models/"))
                elif path.startswith("/api/models/"):
                    self._info(path.removeprefix("/api/models/"))
                elif "/resolve/" in path:
                    self._resolve(path.lstrip("/"))
                else:
                    self._send(*_error(404, "EntryNotFound", path))

            def _info(self, rest: str) -> None:
                with hub._lock:
                    hub._info_requests += 1
                repo_id, _, revision = rest.partition("/revision/")
                self._send(*hub._model_info(repo_id, revision or "main"))

            def do_HEAD(self) -> None:
                # What huggingface_hub asks before each download (its file metadata):
                # the headers of the GET, no body, and no download counted.
                path = unquote(urlsplit(self.path).path)
                if "/resolve/" in path:
                    self._resolve(path.lstrip("/"), head=True)
                else:
                    self._send(*_error(404, "EntryNotFound", path), head=True)

            def _tree(self, rest: str) -> None:
                # The files under a folder, as transformers asks for optional ones
                # (a tokenizer's chat templates); a folder the repo lacks is a 404.
                repo_id, _, tail = rest.partition("/tree/")
                _, _, folder = tail.partition("/")
                repo = hub._repos.get(repo_id)
                if repo is None:
                    self._send(*_error(404, "RepoNotFound", repo_id))
                    return
                prefix = folder.strip("/") + "/" if folder.strip("/") else ""
                entries = [
                    {"type": "file", "path": name, "size": path.stat().st_size, "oid": "0" * 40}
                    for name, path in sorted(repo.files.items())
                    if name.startswith(prefix)
                ]
                if not entries:
                    self._send(*_error(404, "EntryNotFound", folder))
                    return
                body = json.dumps(entries).encode()
                self._send(200, {"Content-Type": "application/json"}, body)

            def _resolve(self, rest: str, *, head: bool = False) -> None:
                repo_id, _, tail = rest.partition("/resolve/")
                revision, _, filename = tail.partition("/")
                repo = hub._repos.get(repo_id)
                if repo is None or revision not in ("main", repo.commit):
                    self._send(*_error(404, "RepoNotFound", repo_id), head=head)
                    return
                file = repo.files.get(filename)
                if file is None:
                    self._send(*_error(404, "EntryNotFound", filename), head=head)
                    return
                if head:
                    self.send_response(200)
                    self._file_headers(repo, filename, file.stat().st_size)
                    self.end_headers()
                    return
                with hub._lock:
                    hub._downloads[(repo_id, filename)] += 1
                behaviour = hub.behaviour
                if filename in behaviour.fail:
                    self._send(*_error(500, "", "the hub is having a bad day"))
                    return
                data = file.read_bytes()
                if filename in behaviour.corrupt:
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                self.send_response(200)
                self._file_headers(repo, filename, len(data))
                self.end_headers()
                half = len(data) // 2
                cut = filename in behaviour.cut
                for start in range(0, len(data), _CHUNK):
                    if cut and start >= half:
                        behaviour.cut_reached.set()
                        behaviour.release_cut.wait(timeout=120)
                        self.close_connection = True
                        return
                    self.wfile.write(data[start : start + _CHUNK])
                    if behaviour.seconds_per_chunk:
                        # The hub's network speed, not synchronisation.
                        time.sleep(behaviour.seconds_per_chunk)

            def _file_headers(self, repo: _Repo, filename: str, size: int) -> None:
                self.send_header("Content-Length", str(size))
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("ETag", f'"{repo.sha256[filename]}"')
                self.send_header("X-Repo-Commit", repo.commit)

            def _send(
                self, status: int, headers: dict[str, str], body: bytes, *, head: bool = False
            ) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

        return Handler


def _error(status: int, code: str, message: str) -> tuple[int, dict[str, str], bytes]:
    headers = {"Content-Type": "application/json", "X-Error-Message": message}
    if code:
        headers["X-Error-Code"] = code
    return status, headers, json.dumps({"error": message}).encode()


def _scan(root: Path) -> _Repo:
    files = {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}
    sha256 = {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in files.items()}
    commit = hashlib.sha1("".join(sha256[n] for n in sorted(sha256)).encode()).hexdigest()
    return _Repo(root, commit, files, sha256)
