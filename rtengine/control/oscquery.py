"""OSCQuery: the running engine's namespace as JSON over HTTP.

``GET /`` returns the whole tree, ``GET /rtengine/output/gain`` one node,
``GET /?HOST_INFO`` the server description. Nodes carry ``FULL_PATH``,
``CONTENTS`` (containers), ``TYPE`` (``"f"``), ``RANGE``
(``[{"MIN":…, "MAX":…}]``), ``VALUE``, ``ACCESS`` (3: read and write),
``DESCRIPTION`` and ``UNIT``. Values are read live from the parameters.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from ..errors import UserError
from .osc import address_table


def namespace(engine, aliases: dict | None = None) -> dict:
    """The OSCQuery tree of every address (aliases included)."""
    root = {"FULL_PATH": "/", "DESCRIPTION": "rtengine", "CONTENTS": {}}
    for addr, e in address_table(engine, aliases).items():
        parts = [s for s in addr.split("/") if s]
        node = root
        for j, part in enumerate(parts):
            contents = node.setdefault("CONTENTS", {})
            node = contents.setdefault(part, {"FULL_PATH": "/" + "/".join(parts[:j + 1])})
        p = e.param
        value = p.get(e.index)
        node.update({
            "TYPE": "f", "ACCESS": 3,
            "RANGE": [{"MIN": 0.0, "MAX": 1.0}] if e.norm else [{"MIN": p.lo, "MAX": p.hi}],
            "VALUE": [p.to_norm(value) if e.norm else value],
            "DESCRIPTION": (f"{e.target} (alias, 0..1)" if e.alias else
                            f"{p.description} ({'0..1' if e.norm else p.unit or 'no unit'})"),
        })
        if not e.norm:
            node["UNIT"] = [p.unit]
    rt = root["CONTENTS"].setdefault("rtengine", {"FULL_PATH": "/rtengine", "CONTENTS": {}})
    rt["CONTENTS"]["panic"] = {"FULL_PATH": "/rtengine/panic", "TYPE": "", "ACCESS": 2,
                               "DESCRIPTION": "reset every processing stage"}
    rt["CONTENTS"]["patch"] = {"FULL_PATH": "/rtengine/patch", "CONTENTS": {"save": {
        "FULL_PATH": "/rtengine/patch/save", "TYPE": "s", "ACCESS": 2,
        "DESCRIPTION": "write the current state as a patch YAML to the given path"}}}
    return root


class OSCQueryServer:
    def __init__(self, engine, host: str, port: int, osc_port: int, aliases: dict | None = None):
        engine_ref, alias_ref = engine, aliases

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                url = urlsplit(self.path)
                if url.query == "HOST_INFO":
                    body = {"NAME": "rtengine", "OSC_PORT": osc_port, "OSC_TRANSPORT": "UDP",
                            "EXTENSIONS": {"ACCESS": True, "VALUE": True, "RANGE": True,
                                           "DESCRIPTION": True, "UNIT": True}}
                else:
                    node = namespace(engine_ref, alias_ref)
                    for part in [s for s in url.path.split("/") if s]:
                        node = node.get("CONTENTS", {}).get(part)
                        if node is None:
                            self.send_error(404, "no such node")
                            return
                    body = node
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        try:
            self.httpd = ThreadingHTTPServer((host, port), Handler)
        except OSError as e:
            raise UserError(f"cannot serve OSCQuery on {host}:{port}: {e.strerror or e}") from None
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True,
                                       name="oscquery")

    def start(self) -> "OSCQueryServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
