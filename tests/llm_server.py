"""A local test server that speaks the OpenAI Chat Completions and Anthropic Messages wire formats.

Real HTTP on 127.0.0.1, so the real SDKs talk to it through ``base_url``. Its
answer is markdown with every level-2 heading found in the last user message
(the rendered ``${headings}`` list, or a repair request's list), so a normal
answer meets the template's contract. ``script`` holds answers served first, in order
(a weak model's: headings alone, a partial document, invented figures). Chat
Completions are streamed when asked (``stream``), ``piece_delay`` seconds between
pieces. Behaviours for failure tests are set on the instance; every request is
recorded.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HEADING = re.compile(r"^## (.+)$", re.MULTILINE)
MARKER = "SERVER-TEXT"
KEY = "sk-test-4f9a1c0e-never-write-me"  # the API key the tests use: it must reach no file or log


class LLMServer:
    def __init__(self):
        self.requests: list[dict] = []
        self.statuses: list[int] = []  # served in order before normal answers
        self.always_status: int | None = None
        self.fail_when_prompt_contains: str | None = None
        self.drop_last_heading: int = 0  # how many answers in a row lack their last heading
        self.script: list[str] = []  # answers served first, in order
        self.piece_delay: float = 0.0  # seconds between the pieces of a streamed answer
        self.answer_delay: float = 0.0  # seconds before an answer that is not streamed
        # Faults: a stream cut off after this share of its pieces (no finish reason, no
        # [DONE]); an answer stopped by the token limit; a 200 whose body is this text (not
        # JSON); a stream with an event that is not JSON; a 401 echoing the request's key.
        self.cut_at: float | None = None
        self.token_limit: bool = False
        self.raw_body: str | None = None
        self.bad_event: bool = False
        self.echo_key: bool = False
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def openai_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def anthropic_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LLMServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.statuses.clear()
            self.always_status = None
            self.fail_when_prompt_contains = None
            self.drop_last_heading = 0
            self.script.clear()
            self.piece_delay = 0.0
            self.answer_delay = 0.0
            self.cut_at = None
            self.token_limit = False
            self.raw_body = None
            self.bad_event = False
            self.echo_key = False

    def answer(self, last_user: str) -> str:
        if self.script:
            return self.script.pop(0)
        headings = HEADING.findall(last_user)
        if self.drop_last_heading > 0 and headings:
            self.drop_last_heading -= 1
            headings = headings[:-1]
        return "\n\n".join(f"## {h}\n\n{MARKER}: the test server's text under '{h}'." for h in headings) + "\n"

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, body: dict, headers: dict | None = None):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, body: dict, text: str):
                """Server-sent events as the Chat Completions API streams them: a piece per word."""
                import time

                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.end_headers()

                def event(delta: dict, finish=None, usage=None):
                    chunk = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 0, "model": body.get("model"),
                             "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
                    if usage:
                        chunk["usage"] = usage
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()

                try:
                    event({"role": "assistant", "content": ""})
                    pieces = re.findall(r"\S+\s*|\s+", text)
                    if server.cut_at is not None:
                        pieces = pieces[: int(len(pieces) * server.cut_at)]
                    for number, piece in enumerate(pieces):
                        if server.piece_delay:
                            time.sleep(server.piece_delay)
                        if server.bad_event and number == 1:
                            self.wfile.write(b"data: {this is not json\n\n")
                        event({"content": piece})
                    if server.cut_at is not None:
                        return  # the connection closes: no finish reason, no [DONE]
                    finish = "length" if server.token_limit else "stop"
                    event({}, finish, {"prompt_tokens": 11, "completion_tokens": 22, "total_tokens": 33})
                    self.wfile.write(b"data: [DONE]\n\n")
                except (BrokenPipeError, ConnectionResetError):  # the client stopped reading
                    pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                kind = "openai" if self.path.endswith("/chat/completions") else "anthropic" if self.path.endswith("/messages") else None
                with server.lock:
                    server.requests.append({"path": self.path, "kind": kind, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
                    status = server.statuses.pop(0) if server.statuses else server.always_status
                    messages = body.get("messages", [])
                    last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
                    if isinstance(last_user, list):
                        last_user = "".join(part.get("text", "") for part in last_user)
                    first_user = next((m["content"] for m in messages if m["role"] == "user"), "")
                    if server.fail_when_prompt_contains and server.fail_when_prompt_contains in str(first_user):
                        status = 500
                    text = None if status else server.answer(last_user)
                if kind is None:
                    return self._send(404, {"error": {"message": "unknown path"}})
                if server.echo_key:
                    secret = self.headers.get("authorization") or self.headers.get("x-api-key")
                    return self._send(401, {"error": {"message": f"invalid credentials: {secret}", "type": "auth"},
                                            "type": "error"})
                if server.raw_body is not None and status is None:
                    data = server.raw_body.encode()
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                if status:
                    retry = {"retry-after-ms": "5"}
                    if kind == "openai":
                        return self._send(status, {"error": {"message": f"test error {status}", "type": "test"}}, retry)
                    return self._send(status, {"type": "error", "error": {"type": "api_error", "message": f"test error {status}"}}, retry)
                if kind == "openai" and body.get("stream"):
                    return self._stream(body, text)
                if server.answer_delay:
                    import time

                    time.sleep(server.answer_delay)
                if kind == "openai":
                    return self._send(
                        200,
                        {
                            "id": "chatcmpl-test",
                            "object": "chat.completion",
                            "created": 0,
                            "model": body.get("model"),
                            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                            "usage": {"prompt_tokens": 11, "completion_tokens": 22, "total_tokens": 33},
                        },
                    )
                return self._send(
                    200,
                    {
                        "id": "msg_test",
                        "type": "message",
                        "role": "assistant",
                        "model": body.get("model"),
                        "content": [{"type": "text", "text": text}],
                        "stop_reason": "max_tokens" if server.token_limit else "end_turn",
                        "stop_sequence": None,
                        "usage": {"input_tokens": 11, "output_tokens": 22},
                    },
                )

        return Handler

