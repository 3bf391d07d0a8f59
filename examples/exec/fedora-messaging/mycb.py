"""A fedora-messaging consumer callback, written as for fedora-messaging (nothing about the hub):
`hub_fm_adapter.py` runs it under the hub. What it does with a message is chosen by the body's
"do" field, so that the hub's tests can drive every outcome; a real callback just handles it.
It records what it saw as a JSON file named after the message id, in $OUT.
"""
import json, os, threading
from fedora_messaging import config
from fedora_messaging.exceptions import Drop, HaltConsumer, Nack

OUT = os.environ["OUT"]
together = threading.Barrier(4, timeout=10)


class Consumer:
    def __init__(self):
        print("consumer ready")  # callbacks print; it must not break the protocol
        self.nacked = set()
        self.greeting = config.conf["consumer_config"]["greeting"]

    def __call__(self, message):
        do = message.body.get("do")
        print("handling", message.id, end="")  # not even a newline
        with open(os.path.join(OUT, message.id), "w") as f:
            json.dump({"topic": message.topic, "body": message.body, "greeting": self.greeting,
                       "class": type(message).__name__}, f)
        if do == "nack-once" and message.id not in self.nacked:
            self.nacked.add(message.id)
            raise Nack()
        if do == "drop":
            raise Drop()
        if do == "halt":
            raise HaltConsumer(exit_code=0, requeue=True)
        if do == "fail":
            raise RuntimeError("boom")
        if do == "together":
            together.wait()
