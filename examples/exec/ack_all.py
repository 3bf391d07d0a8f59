#!/usr/bin/env python3
"""The trivial stream consumer of the exec benchmark: parse each line, answer ack."""
import json
import sys

json.loads(sys.stdin.readline())
sys.stdout.write('{"type": "ready", "protocol": 1}\n')
sys.stdout.flush()
out = sys.stdout
for line in sys.stdin:
    out.write('{"type": "ack", "id": %s}\n' % json.dumps(json.loads(line)["id"]))
    out.flush()
