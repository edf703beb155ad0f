#!/usr/bin/env python3
"""A tiny sample service for the local mesh (Python standard library only).

Answers every GET with JSON naming the service, its version and pod, and the tracing headers the
request carried (x-request-id, traceparent, B3), so the client can show which version served it
and that the sidecars propagated the request's identity.
"""
import argparse
import json
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TRACE_HEADERS = ("x-request-id", "traceparent", "tracestate", "x-b3-traceid", "x-b3-spanid",
                 "x-b3-sampled", "x-forwarded-proto", "x-envoy-attempt-count")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--service", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--pod", required=True)
    parser.add_argument("--listen", required=True, help="IP:PORT")
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self):
            super().setup()
            # Headers and body go out in two writes; without this, Nagle plus delayed ACKs add
            # 40 ms to every keep-alive request.
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def do_GET(self):
            seen = {h: self.headers[h] for h in TRACE_HEADERS if self.headers[h] is not None}
            body = json.dumps({"service": args.service, "version": args.version,
                               "pod": args.pod, "path": self.path,
                               "host": self.headers.get("host"), "headers": seen}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt, *a):  # one line per request would drown the split display
            pass

    server = ThreadingHTTPServer((host, int(port)), Handler)
    server.daemon_threads = True
    print(f"{args.pod}: {args.service} {args.version} listening on {args.listen}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
