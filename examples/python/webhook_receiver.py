"""A webhook receiver for Herald's events, verifying each delivery's signature with the
`standardwebhooks` library (the Standard Webhooks reference implementation), not Herald's code.

Run:  HERALD_WEBHOOK_SECRET=whsec_... python webhook_receiver.py --port 8000
then make a webhook pointing at it:

    curl -X POST http://localhost:3978/v1/webhooks -H "Authorization: Bearer $KEY" \
      -H 'Content-Type: application/json' \
      -d '{"url": "http://receiver.example:8000/", "types": ["herald.notification.*"]}'

Each verified event is printed as one JSON line: {"webhookId": ..., "event": {...}}.
`--fail-first N` answers 500 to the first N deliveries (to watch Herald retry).
"""

import argparse
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--fail-first", type=int, default=0)
    args = parser.parse_args()
    verifier = Webhook(os.environ["HERALD_WEBHOOK_SECRET"])
    failures_left = [args.fail_first]
    # The server answers each delivery on its own thread: one lock keeps the printed lines whole
    # (print writes the text and its newline apart) and the failure count exact.
    lock = threading.Lock()

    def say(line: dict) -> None:
        with lock:
            sys.stdout.write(json.dumps(line) + "\n")
            sys.stdout.flush()

    def fail_this_one() -> bool:
        with lock:
            if failures_left[0] > 0:
                failures_left[0] -= 1
                return True
            return False

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (the http.server name)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            headers = {name.lower(): value for name, value in self.headers.items()}
            try:
                event = verifier.verify(body, headers)
            except WebhookVerificationError as error:
                say({"rejected": str(error)})
                self.send_response(400)
                self.end_headers()
                return
            if fail_this_one():
                say({"failed": headers["webhook-id"]})
                self.send_response(500)
                self.end_headers()
                return
            say({"webhookId": headers["webhook-id"], "event": event})
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_args) -> None:
            pass  # stdout carries only the events

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    say({"listening": args.port})
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
