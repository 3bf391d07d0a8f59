"""Checks that what the hub publishes is accepted by fedora-messaging's consumer path.

argv: amqp_url queue topic. Declares `queue` bound to amq.topic with `topic`, prints "ready",
then waits (20 s) for one message and runs fedora_messaging.message.get_message on it (what
fedora-messaging consumers do: it validates headers, severity, encoding and the JSON body),
printing the accepted message as JSON.
"""
import json
import sys
import time

import pika
from fedora_messaging import message

url, queue, topic = sys.argv[1], sys.argv[2], sys.argv[3]
conn = pika.BlockingConnection(pika.URLParameters(url))
ch = conn.channel()
ch.queue_declare(queue=queue, auto_delete=True)
ch.queue_bind(queue=queue, exchange="amq.topic", routing_key=topic)
print("ready", flush=True)
deadline = time.time() + 20
while time.time() < deadline:
    method, properties, body = ch.basic_get(queue=queue, auto_ack=True)
    if method is None:
        time.sleep(0.05)
        continue
    msg = message.get_message(method.routing_key, properties, body)
    print(json.dumps({
        "id": msg.id,
        "topic": msg.topic,
        "body": msg.body,
        "severity": msg.severity,
        "schema": properties.headers.get("fedora_messaging_schema"),
        "sent_at": properties.headers.get("sent-at"),
        "delivery_mode": properties.delivery_mode,
        "content_type": properties.content_type,
    }), flush=True)
    conn.close()
    sys.exit(0)
sys.exit("no message within 20 s")
