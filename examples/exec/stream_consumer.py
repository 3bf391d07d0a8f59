#!/usr/bin/env python3
"""A stream consumer for the hub's exec protocol, version 1 (docs/exec-protocol.md), in the
standard library only. The core is the first twenty lines of `main`; the rest makes it useful
for the hub's tests: what it does with a message is chosen by the message body's "do" field.

Run by the hub with: type = "exec", settings = { command = ["python3", "examples/exec/stream_consumer.py"] }
"""
import json
import os
import sys
import time


def send(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def verdict(msg):
    body = msg.get("body")
    do = body.get("do") if isinstance(body, dict) else None
    mid = msg["id"]
    if do == "retry-once" and msg["attempt"] == 1:
        return {"type": "retry", "id": mid, "reason": "try again later"}
    if do == "retry-later":
        return {"type": "retry", "id": mid, "reason": "busy", "delay": "300ms"}
    if do == "reject":
        return {"type": "reject", "id": mid, "reason": "no such build"}
    if do == "publish":
        return {"type": "ack", "id": mid,
                "publish": [{"topic": "org.example.done", "body": {"from": mid}}]}
    if do == "exit":
        sys.exit(3)
    if do == "hang":
        time.sleep(3600)
    if do == "garbage":
        sys.stdout.write("this is not json\n")
        sys.stdout.write("x" * (10 * 1024 * 1024) + "\n")
        send({"type": "ack", "id": "no-such-id"})
    return {"type": "ack", "id": mid}


def main():
    hello = json.loads(sys.stdin.readline())
    assert hello["type"] == "hello" and hello["protocol"] == 1
    if os.environ.get("NOT_READY"):
        time.sleep(3600)
    if os.environ.get("PIDFILE"):
        with open(os.environ["PIDFILE"], "w") as f:
            f.write(str(os.getpid()))
    send({"type": "ready", "protocol": 1})
    hold = int(os.environ.get("HOLD", "1"))  # answer in batches of HOLD, last first
    slow = float(os.environ.get("SLOW_MS", "0")) / 1000  # time taken per message
    seen = os.environ.get("SEEN")
    held = []
    for line in sys.stdin:
        msg = json.loads(line)
        print(f"got {msg['id']} on {msg['topic']}", file=sys.stderr, flush=True)
        if seen:
            with open(seen, "a") as f:
                f.write(msg["id"] + "\n")
        if slow:
            time.sleep(slow)
        held.append(verdict(msg))
        if len(held) >= hold:
            for v in reversed(held):
                send(v)
            held = []


main()
