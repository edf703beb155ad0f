#!/usr/bin/env python3
"""The local mesh's client: drives requests through its sidecar and prints the split.

Sends GET http://reviews:9080/ through the client's sidecar (an explicit HTTP proxy on its
outbound port), counts which version answered, and prints one line per second, e.g.
    reviews  v1:  80%  v2:  20%   (48 req/s, 0 errors)  x-request-id 6f1c...
             trace 4bf92f35...: client.default CLIENT 2.1ms -> reviews.default SERVER 0.9ms
                 (reviews.default.svc.cluster.local:9080/*)
The counts are per second, so an edit of the VirtualService's weights shows within a second.
The trace line shows one request of the previous second (its B3 trace id, as the reviews app saw
it) with the spans the sidecars reported for it to the collector (--collector), parent first.
With --for N it exits after N seconds: 0 when every second had answers and no errors
(and, with --expect-versions, every listed version answered; with --expect-trace-spans K, some
trace had at least K spans at the collector), 1 otherwise.
"""
import argparse
import collections
import http.client
import json
import sys
import threading
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--proxy", required=True, help="sidecar's outbound IP:PORT")
    parser.add_argument("--authority", default="reviews:9080")
    parser.add_argument("--path", default="/")
    parser.add_argument("--rate", type=int, default=50, help="requests per second")
    parser.add_argument("--for", dest="duration", type=float, default=0,
                        help="exit after this many seconds (0 = run until interrupted)")
    parser.add_argument("--expect-versions", default="", help="e.g. v1,v2")
    parser.add_argument("--collector", default="", help="Zipkin collector IP:PORT")
    parser.add_argument("--expect-trace-spans", type=int, default=0,
                        help="with --for: fail unless some trace had this many spans")
    args = parser.parse_args()
    host, port = args.proxy.rsplit(":", 1)

    lock = threading.Lock()
    counts = collections.Counter()
    errors = collections.Counter()
    last = {}
    seen_versions = set()

    def one_request(conn):
        conn.request("GET", f"http://{args.authority}{args.path}",
                     headers={"host": args.authority})
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            return None, f"HTTP {resp.status} {resp.getheader('x-envoy-response-flags') or ''}".strip()
        return json.loads(body), None

    def worker():
        conn = None
        interval = 1.0 / max(args.rate, 1)
        while True:
            started = time.monotonic()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(host, int(port), timeout=5)
                reply, error = one_request(conn)
            except (OSError, http.client.HTTPException, ValueError) as e:
                reply, error = None, type(e).__name__
                conn = None
            with lock:
                if error:
                    errors[error] += 1
                else:
                    version = reply.get("version", "?")
                    counts[version] += 1
                    seen_versions.add(version)
                    last.update(reply.get("headers", {}))
            time.sleep(max(0.0, interval - (time.monotonic() - started)))

    threading.Thread(target=worker, daemon=True).start()
    started = time.monotonic()
    healthy = True
    pending_trace = None
    longest_chain = 0
    while True:
        time.sleep(1)
        with lock:
            total = sum(counts.values())
            split = "  ".join(f"{v}: {100 * n / total:3.0f}%" for v, n in sorted(counts.items())) \
                if total else "no answers"
            err = sum(errors.values())
            detail = ", ".join(f"{k} x{n}" for k, n in errors.items())
            rid = last.get("x-request-id", "-")
            trace = last.get("x-b3-traceid")
            healthy = healthy and total > 0 and err == 0
            counts.clear()
            errors.clear()
        print(f"{args.authority.split(':')[0]:8} {split:24} ({total} req/s, {err} errors{': ' + detail if detail else ''})"
              f"  x-request-id {rid}", flush=True)
        if args.collector:
            # The previous second's request: its spans have been reported by now (the sidecars
            # send a batch every 5 spans or 5 s).
            if pending_trace:
                spans = fetch_trace(args.collector, pending_trace)
                longest_chain = max(longest_chain, len(spans))
                print(f"{'':8} trace {pending_trace}: {chain(spans)}", flush=True)
            pending_trace = trace
        if args.duration and time.monotonic() - started >= args.duration:
            wanted = {v for v in args.expect_versions.split(",") if v}
            missing = wanted - seen_versions
            if missing:
                print(f"versions never seen: {', '.join(sorted(missing))}", flush=True)
            traced = longest_chain >= args.expect_trace_spans
            if not traced:
                print(f"no trace reached {args.expect_trace_spans} spans at the collector", flush=True)
            sys.exit(0 if healthy and not missing and traced else 1)


def fetch_trace(collector, trace_id):
    """The spans the collector holds for trace_id (empty when none or unreachable)."""
    host, port = collector.rsplit(":", 1)
    try:
        conn = http.client.HTTPConnection(host, int(port), timeout=2)
        conn.request("GET", f"/api/v2/trace/{trace_id}")
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        return json.loads(body) if resp.status == 200 else []
    except (OSError, http.client.HTTPException, ValueError):
        return []


def chain(spans):
    """Spans parent first: `client.default CLIENT 2.1ms -> reviews.default SERVER 0.9ms  (op)`."""
    if not spans:
        return "(no spans reported yet)"
    by_parent = collections.defaultdict(list)
    ids = {s.get("id") for s in spans}
    for s in spans:
        by_parent[s.get("parentId") if s.get("parentId") in ids else None].append(s)
    ordered, queue = [], list(by_parent[None])
    while queue:
        span = queue.pop(0)
        ordered.append(span)
        queue.extend(by_parent.get(span.get("id"), []))
    hops = " -> ".join(
        f"{s.get('localEndpoint', {}).get('serviceName', '?')} {s.get('kind', '?')} "
        f"{s.get('duration', 0) / 1000:.1f}ms"
        for s in ordered)
    return f"{hops}  ({ordered[0].get('name', '?')})" if ordered else hops


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
