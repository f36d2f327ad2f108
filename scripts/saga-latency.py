#!/usr/bin/env python3
"""Runs sagas one at a time against a running system and reports how long each took.

    python3 scripts/saga-latency.py [--url http://127.0.0.1:8080] [--sagas 200]

For each saga: POST /orders, then poll GET /sagas/{id} every millisecond until it is terminal.
Reports the wall-clock time from sending the POST to seeing the terminal status, and the
orchestrator's own created_at -> completed_at, as p50/p95/p99/max. Standard library only.
"""
import argparse
import datetime
import json
import statistics
import time
import urllib.request

BODY = {"order_details": {"foodItems": [{"name": "Burger", "price": 12.5, "quantity": 2}], "deliveryFee": 3.0}}


def call(url, data=None):
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read())


def ts(s):
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--sagas", type=int, default=200)
    ap.add_argument("--customer", default="c-latency")
    a = ap.parse_args()
    wall, internal, statuses = [], [], {}
    for i in range(a.sagas):
        body = dict(BODY, customer_id=f"{a.customer}-{i}")
        t0 = time.perf_counter()
        sid = call(a.url + "/orders", json.dumps(body).encode())["saga_id"]
        while True:
            s = call(f"{a.url}/sagas/{sid}")
            if s["status"] in ("COMPLETED", "COMPENSATED", "FAILED"):
                break
            time.sleep(0.001)
        wall.append((time.perf_counter() - t0) * 1000)
        internal.append((ts(s["completed_at"]) - ts(s["created_at"])) * 1000)
        statuses[s["status"]] = statuses.get(s["status"], 0) + 1
    for name, xs in (("wall POST->terminal seen", wall), ("created_at->completed_at", internal)):
        print(f"{name:26s} ms: p50 {pct(xs,50):.1f}  p95 {pct(xs,95):.1f}  p99 {pct(xs,99):.1f}  max {max(xs):.1f}  mean {statistics.mean(xs):.1f}")
    print("statuses:", statuses)


if __name__ == "__main__":
    main()
