"""Consumes Herald's events from `{ns}.events` with pika: a queue of its own, bound to the
types it wants, acked after handling. Events are CloudEvents 1.0 (JSON); de-duplicate by `id`,
since delivery is at least once.

Run:  python consume_events.py --amqp-url amqp://guest:guest@localhost:5672/%2f \
          --namespace herald --queue my-service.herald-events --bind 'herald.notification.*'
Prints one JSON line per event; `--count N` stops after N distinct events.
"""

import argparse
import json

import pika


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--amqp-url", default="amqp://guest:guest@localhost:5672/%2f")
    parser.add_argument("--namespace", default="herald")
    parser.add_argument("--queue", required=True)
    parser.add_argument("--bind", action="append", default=[])
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument(
        "--transient",
        action="store_true",
        help="a queue that goes when this consumer does (for trying it out, and tests)",
    )
    args = parser.parse_args()

    connection = pika.BlockingConnection(pika.URLParameters(args.amqp_url))
    channel = connection.channel()
    exchange = f"{args.namespace}.events"
    # Herald declares the exchange; declaring it the same way here is harmless and lets this
    # consumer start first.
    channel.exchange_declare(exchange=exchange, exchange_type="topic", durable=True)
    if args.transient:
        channel.queue_declare(queue=args.queue, exclusive=True, auto_delete=True)
    else:
        # A service's own queue outlives its restarts, so no event is missed meanwhile.
        channel.queue_declare(
            queue=args.queue, durable=True, arguments={"x-queue-type": "quorum"}
        )
    for pattern in args.bind or ["#"]:
        # Routing keys are the event types; `herald.notification.*` is AMQP topic syntax too.
        channel.queue_bind(queue=args.queue, exchange=exchange, routing_key=pattern)
    print(json.dumps({"consuming": args.queue}), flush=True)

    seen = set()
    for method, _properties, body in channel.consume(args.queue):
        event = json.loads(body)
        if event["id"] not in seen:
            seen.add(event["id"])
            print(json.dumps(event), flush=True)
        channel.basic_ack(method.delivery_tag)
        if args.count and len(seen) >= args.count:
            break
    channel.cancel()
    connection.close()


if __name__ == "__main__":
    main()
