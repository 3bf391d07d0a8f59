#!/bin/sh
# A per-message consumer in shell (type = "exec", mode = "per-message"): the message arrives on
# stdin as one JSON object, with HUB_TOPIC, HUB_MESSAGE_ID and HUB_ATTEMPT in the environment.
# Exit 0 = done, 75 = try again later, anything else = the message is bad (the last stderr
# line is the reason). Here: append "<topic> <id>" to $LOG, refuse messages without a body.
set -eu
body=$(cat)
case "$body" in
  *'"body":null'*) echo "no body in message $HUB_MESSAGE_ID" >&2; exit 2 ;;
esac
if [ ! -w "$(dirname "${LOG:?LOG is not set}")" ]; then
  echo "cannot write to $LOG yet" >&2
  exit 75
fi
echo "$HUB_TOPIC $HUB_MESSAGE_ID attempt=$HUB_ATTEMPT" >> "$LOG"
