"""A local stand-in for the Hugging Face Hub's HTTP API (no network): serves the files of one
folder as a model repository, enough for `huggingface_hub.snapshot_download` — revision info,
the recursive tree listing (with LFS sha256) and `resolve` downloads (HEAD + GET).

    with FakeHub({"IGNF/MAESTRO_FLAIR-HUB_base": folder}) as hub:
        env["HF_ENDPOINT"] = hub.url

Run it in the test process; the code under test runs in a subprocess with HF_ENDPOINT set.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


class FakeHub:
    def __init__(self, repos: dict[str, Path], lfs_min_size: int = 1024) -> None:
        self.repos = {k: Path(v) for k, v in repos.items()}
        self.lfs_min_size = lfs_min_size
        self.requests: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def files(self, repo: str) -> dict[str, Path]:
        root = self.repos[repo]
        return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}

    def entry(self, path: str, file: Path) -> dict:
        data = file.read_bytes()
        out = {"type": "file", "path": path, "size": len(data), "oid": _git_sha1(data)}
        if len(data) >= self.lfs_min_size:
            sha = hashlib.sha256(data).hexdigest()
            out["lfs"] = {"oid": sha, "size": len(data), "pointerSize": 134}
        return out

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _send(self, code: int, body: bytes = b"", headers: dict | None = None,
                      head: bool = False) -> None:  # fmt: skip
                self.send_response(code)
                for k, v in {"Content-Length": str(len(body)), **(headers or {})}.items():
                    self.send_header(k, v)
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _json(self, obj: object) -> None:
                self._send(200, json.dumps(obj).encode(), {"Content-Type": "application/json"})

            def _route(self, head: bool) -> None:
                url = urlparse(self.path)
                path = unquote(url.path)
                hub.requests.append(f"{self.command} {path}")
                for repo in hub.repos:
                    files = hub.files(repo)
                    if path.startswith((f"/api/models/{repo}/revision/",)):
                        return self._json({
                            "id": repo, "modelId": repo, "sha": COMMIT, "private": False,
                            "siblings": [{"rfilename": f} for f in files],
                        })  # fmt: skip
                    if path.startswith(f"/api/models/{repo}/tree/"):
                        return self._json([hub.entry(f, p) for f, p in files.items()])
                    prefix = f"/{repo}/resolve/"
                    if path.startswith(prefix):
                        _, _, name = path[len(prefix):].partition("/")
                        if name not in files:
                            return self._send(404, b"", {"X-Error-Code": "EntryNotFound"},
                                              head)  # fmt: skip
                        e = hub.entry(name, files[name])
                        etag = e["lfs"]["oid"] if "lfs" in e else e["oid"]
                        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{etag}"',
                                   "Content-Type": "application/octet-stream"}  # fmt: skip
                        if "lfs" in e:
                            headers["X-Linked-Etag"] = f'"{etag}"'
                            headers["X-Linked-Size"] = str(e["size"])
                        return self._send(200, files[name].read_bytes(), headers, head)
                self._send(404, b"{}", {"X-Error-Code": "RepoNotFound"}, head)

            def do_GET(self) -> None:
                self._route(head=False)

            def do_HEAD(self) -> None:
                self._route(head=True)

        return Handler
