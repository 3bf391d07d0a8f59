#!/usr/bin/env python3
"""A small client of the hub's gateway (docs/gateway-protocol.md), on the `websockets` library
(pip install websockets).

Subscribes to topic patterns and prints each message it receives as one JSON line; optionally
publishes messages first (each acknowledged with its id); stops after --count messages, or runs
until interrupted.

    client.py ws://127.0.0.1:9898/ws --token "$TOKEN" --subscribe 'org.example.#'
    client.py ws://127.0.0.1:9898/ws --token "$TOKEN" --subscribe 'org.example.#' \
        --publish org.example.hello '{"hi": 1}' --count 1
"""

import argparse
import asyncio
import json
import sys

import websockets


async def run(args):
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    async with websockets.connect(args.url, additional_headers=headers) as ws:
        await ws.send(json.dumps({"op": "subscribe", "patterns": args.subscribe, "ref": "sub"}))
        reply = json.loads(await ws.recv())
        if reply.get("type") != "subscribed":
            sys.exit(f"subscribe refused: {reply}")
        print(json.dumps({"subscribed": reply["patterns"]}), flush=True)
        for i, (topic, body) in enumerate(args.publish or []):
            await ws.send(json.dumps(
                {"op": "publish", "topic": topic, "body": json.loads(body), "ref": i}))
        received, answers = 0, 0
        expected = len(args.publish or [])
        async for frame in ws:
            f = json.loads(frame)
            kind = f.get("type")
            if kind == "ack":
                print(json.dumps({"published": f["id"], "ref": f["ref"]}), flush=True)
                answers += 1
            elif kind == "error":
                print(json.dumps({"error": f["error"], "ref": f.get("ref")}), flush=True)
                answers += 1
            elif kind == "dropped":
                print(json.dumps({"dropped": f["count"]}), file=sys.stderr, flush=True)
            elif kind == "message":
                print(json.dumps({"topic": f["topic"], "id": f["id"], "body": f["body"]}), flush=True)
                received += 1
            # Done once --count messages came and every publish was answered (an ack and the
            # message it published may arrive in either order).
            if args.count and received >= args.count and answers >= expected:
                return


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("url", help="the gateway's WebSocket URL, such as ws://127.0.0.1:9898/ws")
    p.add_argument("--token", help="a [gateway.tokens] token (sent as Authorization: Bearer)")
    p.add_argument("--subscribe", nargs="+", default=["#"], help="topic patterns")
    p.add_argument("--publish", nargs=2, action="append", metavar=("TOPIC", "JSON_BODY"),
                   help="publish this message first (repeatable)")
    p.add_argument("--count", type=int, default=0, help="stop after this many messages")
    args = p.parse_args()
    try:
        asyncio.run(run(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
