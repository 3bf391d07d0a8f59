"""A libzmq (pyzmq) publisher that sends fedmsg envelopes exactly as fedmsg does.

Binds PUB on argv[1]; sends `warm.up` envelopes every 10 ms until a line arrives on stdin, then
`count` (argv[2]) envelopes on `org.fedoraproject.prod.interop.n` with consecutive `i`, then exits.
"""
import json
import select
import sys
import time
import uuid

import zmq

endpoint, count = sys.argv[1], int(sys.argv[2])
ctx = zmq.Context()
sock = ctx.socket(zmq.PUB)
sock.setsockopt(zmq.SNDHWM, 0)  # fedmsg's high_water_mark = 0: never drop locally
sock.setsockopt(zmq.LINGER, 5000)
sock.bind(endpoint)
i = 0


def send(topic, msg):
    global i
    i += 1
    env = {
        "topic": topic,
        "msg": msg,
        "msg_id": "%d-%s" % (time.gmtime().tm_year, uuid.uuid4()),
        "timestamp": int(time.time()),
        "i": i,
        "username": "interop",
    }
    body = json.dumps(env, sort_keys=True, separators=(",", ":"))
    sock.send_multipart([topic.encode("utf-8"), body.encode("utf-8")])


while not select.select([sys.stdin], [], [], 0.01)[0]:
    send("warm.up", {})
sys.stdin.readline()
start = time.time()
for n in range(count):
    send("org.fedoraproject.prod.interop.n", {"n": n, "pad": "x" * 150})
print("sent %d in %.3f s" % (count, time.time() - start), flush=True)
sock.close()
ctx.term()
