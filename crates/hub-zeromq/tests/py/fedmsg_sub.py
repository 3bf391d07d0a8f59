"""A libzmq (pyzmq) subscriber that checks what the hub publishes is a valid fedmsg envelope.

Connects SUB to argv[1], reads argv[2] messages (10 s limit), and exits 0 printing "ok N" when
every one has 2 frames, a frame topic equal to the envelope's, canonical fedmsg JSON (sorted
keys, compact separators), an integer timestamp and `i`, and a `<year>-<uuid4>` msg_id.
"""
import json
import re
import sys
import uuid

import zmq

endpoint, want = sys.argv[1], int(sys.argv[2])
ctx = zmq.Context()
sock = ctx.socket(zmq.SUB)
sock.setsockopt(zmq.RCVTIMEO, 10000)
sock.connect(endpoint)
sock.setsockopt_string(zmq.SUBSCRIBE, "")
seen = []
for _ in range(want):
    frames = sock.recv_multipart()
    assert len(frames) == 2, "frames: %d" % len(frames)
    topic, body = frames[0].decode("utf-8"), frames[1].decode("utf-8")
    env = json.loads(body)
    assert env["topic"] == topic, "topic envelope mismatch"
    canonical = json.dumps(env, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert canonical == body, "not canonical:\n%s\n%s" % (canonical, body)
    assert isinstance(env["timestamp"], int) and isinstance(env["i"], int)
    year, rest = env["msg_id"].split("-", 1)
    assert re.fullmatch(r"\d{4}", year) and uuid.UUID(rest).version == 4, env["msg_id"]
    assert isinstance(env["msg"], dict) and "username" in env
    seen.append(env["i"])
assert seen == sorted(seen), "i not increasing: %r" % seen
print("ok %d" % len(seen))
