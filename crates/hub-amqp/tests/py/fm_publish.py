"""Publishes one message with the real fedora-messaging library; prints its id.

argv: amqp_url topic. The library reads its config from FEDORA_MESSAGING_CONF (written here).
"""
import os
import sys
import tempfile

url, topic = sys.argv[1], sys.argv[2]
conf = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
conf.write('amqp_url = "%s"\npublish_exchange = "amq.topic"\n' % url)
conf.close()
os.environ["FEDORA_MESSAGING_CONF"] = conf.name

from fedora_messaging import api, message  # noqa: E402

msg = message.Message(topic=topic, body={"hello": "from fedora-messaging", "n": 42})
api.publish(msg)
print(msg.id, flush=True)
