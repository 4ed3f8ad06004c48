"""A real HTTP server on 127.0.0.1 speaking the OpenAI chat-completions protocol, scripted per request."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

GOOD = '```json\n{"label": "bright piano", "confidence": 4, "description": "a high, clear piano line"}\n```'


class FakeLLM:
    """Each request pops the next scripted reply: ("content", text) | ("refusal", text) |
    ("slow", seconds) | ("status", code) | ("garbage", text); the last one repeats."""

    def __init__(self, script: list[tuple[str, object]]) -> None:
        self.script = list(script)
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                server.headers.append(dict(self.headers))
                kind, value = server.script.pop(0) if len(server.script) > 1 else server.script[0]
                if kind == "slow":
                    time.sleep(value)
                    kind, value = "content", GOOD
                if kind == "status":
                    self.send_response(value)
                    self.end_headers()
                    return
                if kind == "garbage":
                    payload = value.encode()
                else:
                    message = {"role": "assistant", "content": value if kind == "content" else None}
                    if kind == "refusal":
                        message["refusal"] = value
                    payload = json.dumps({"choices": [{"index": 0, "message": message}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeLLM:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
