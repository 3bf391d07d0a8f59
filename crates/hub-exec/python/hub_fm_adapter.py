#!/usr/bin/env python3
"""Run a fedora-messaging consumer callback, unchanged, under the hub (exec stream protocol v1,
docs/exec-protocol.md).

    command = ["python3", "hub_fm_adapter.py", "--callback", "mypkg.consumer:Consumer",
               "--config", "/etc/fedora-messaging/config.toml"]

As fedora-messaging does: the callback is `module:name`, from --callback or the config file's
`callback`; a class is instantiated once, a plain callable is called; the message is built by
fedora-messaging itself (`fedora_messaging.message.get_message`: the schema class is chosen by
the `fedora_messaging_schema` header through its registry, the base class when unknown); the
config file's `[consumer_config]` is `fedora_messaging.config.conf["consumer_config"]`.

Outcomes: a return is `ack`; `Nack` is `retry`; `Drop` is `reject` ("dropped by callback"); a
message that fails its schema is `reject`; `HaltConsumer` answers per its `requeue` flag (retry,
else ack) and then the adapter exits with its exit code (the hub starts it again); any other
exception is `retry`, with the traceback on stderr. With the consumer's `concurrency` N, N
callbacks run at once, in threads (fedora-messaging runs one).
"""
import argparse
import concurrent.futures
import importlib
import inspect
import json
import os
import sys
import threading
import traceback

import pika
from fedora_messaging import config, exceptions, message as fm_message

_out = threading.Lock()
# The protocol gets its own copy of stdout; what the callback prints goes to stderr (logged by
# the hub), so it can never break an answer line.
_proto = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
sys.stdout = sys.stderr


def send(obj):
    with _out:
        _proto.write(json.dumps(obj) + "\n")
        _proto.flush()


def load_callback(path):
    module, name = path.strip().split(":")
    target = getattr(importlib.import_module(module), name)
    if inspect.isclass(target):
        target = target()
    if not callable(target):
        raise ValueError(f"{path}: not a class with __call__ nor a function")
    return target


def build(msg):
    headers = dict(msg.get("headers") or {})
    props = pika.BasicProperties(
        content_type="application/json",
        content_encoding="utf-8",
        headers=headers,
        message_id=msg["id"],
    )
    body = json.dumps(msg.get("body")).encode("utf-8")
    return fm_message.get_message(msg["topic"], props, body)


def handle(callback, msg):
    answer = {"type": "ack", "id": msg["id"]}
    try:
        callback(build(msg))
    except exceptions.ValidationError as e:
        answer = {"type": "reject", "id": msg["id"], "reason": f"fails its schema: {e}"}
    except exceptions.Nack:
        answer = {"type": "retry", "id": msg["id"], "reason": "nacked by callback"}
    except exceptions.Drop:
        answer = {"type": "reject", "id": msg["id"], "reason": "dropped by callback"}
    except exceptions.HaltConsumer as e:
        if e.requeue:
            answer = {"type": "retry", "id": msg["id"], "reason": f"consumer halted: {e.reason}"}
        # Answer, then stop at once: the hub starts the adapter again; what other threads had
        # in hand is retried.
        send(answer)
        os._exit(e.exit_code)
    except BaseException as e:  # noqa: BLE001 - every failure is answered: a retry may help
        traceback.print_exc(file=sys.stderr)
        answer = {"type": "retry", "id": msg["id"], "reason": f"{type(e).__name__}: {e}"}
    send(answer)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callback", help="module:name (default: the config file's callback)")
    parser.add_argument("--config", help="fedora-messaging config file (default: its own search)")
    args = parser.parse_args()
    config.conf.load_config(args.config)
    hello = json.loads(sys.stdin.readline())
    if hello.get("type") != "hello" or hello.get("protocol") != 1:
        print(f"not a protocol 1 hello: {hello!r}", file=sys.stderr)
        sys.exit(2)
    callback = load_callback(args.callback or config.conf["callback"])
    workers = max(1, int(hello.get("concurrency", 1)))
    send({"type": "ready", "protocol": 1})
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        for line in sys.stdin:
            pool.submit(handle, callback, json.loads(line))


main()
