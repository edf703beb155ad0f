#!/usr/bin/env python3
"""A tiny Zipkin-compatible trace collector for the local mesh (Python standard library only).

Accepts what Zipkin accepts from Envoy-style tracers: POST /api/v2/spans with a JSON array of v2
spans (answered 202). Keeps the spans of the last traces in memory and serves them the way
Zipkin's query API does:
    GET /api/v2/trace/TRACE_ID   the spans of one trace (404 when unknown)
    GET /api/v2/traces?limit=N   the last N traces, each a list of spans
    GET /health                  200 once listening
"""
import argparse
import collections
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

MAX_TRACES = 10000


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", required=True, help="IP:PORT")
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    lock = threading.Lock()
    traces = collections.OrderedDict()  # trace id -> spans, oldest first

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def reply(self, status, payload=None):
            body = b"" if payload is None else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            length = int(self.headers.get("content-length") or 0)
            data = self.rfile.read(length)
            if urlparse(self.path).path != "/api/v2/spans":
                return self.reply(404)
            try:
                spans = json.loads(data)
                assert isinstance(spans, list)
            except (ValueError, AssertionError):
                return self.reply(400)
            with lock:
                for span in spans:
                    trace = str(span.get("traceId", "")).lower()
                    traces.setdefault(trace, []).append(span)
                    traces.move_to_end(trace)
                while len(traces) > MAX_TRACES:
                    traces.popitem(last=False)
            self.reply(202)

        def do_GET(self):
            url = urlparse(self.path)
            if url.path == "/health":
                return self.reply(200, {"status": "UP"})
            if url.path.startswith("/api/v2/trace/"):
                trace = url.path.rsplit("/", 1)[1].lower()
                with lock:
                    spans = list(traces.get(trace, []))
                return self.reply(200 if spans else 404, spans or None)
            if url.path == "/api/v2/traces":
                limit = int(parse_qs(url.query).get("limit", ["10"])[0])
                with lock:
                    last = [list(s) for s in list(traces.values())[-limit:]]
                return self.reply(200, last)
            self.reply(404)

        def log_message(self, fmt, *a):
            pass

    server = ThreadingHTTPServer((host, int(port)), Handler)
    server.daemon_threads = True
    print(f"zipkin collector listening on {args.listen}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
