#!/usr/bin/env python3
"""Publish a Herald notification job from another service, the way the contract asks.

Usage: publish_notification.py TENANT_ID AAD_OBJECT_ID [TEXT]

Reads HERALD_AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2f) and HERALD_NAMESPACE
(default herald). Prints the job id on success; exits 1 if the broker did not take the job.
"""
import json
import os
import sys
import uuid

import pika


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    tenant_id, aad_object_id = sys.argv[1], sys.argv[2]
    text = sys.argv[3] if len(sys.argv) > 3 else "Hello from another service"
    url = os.environ.get("HERALD_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
    namespace = os.environ.get("HERALD_NAMESPACE", "herald")

    job = {
        "id": str(uuid.uuid4()),  # your own id: republishing it never sends twice
        "to": {"user": {"tenantId": tenant_id, "aadObjectId": aad_object_id}},
        "message": {"text": text, "textFormat": "markdown"},
    }

    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()  # basic_publish now raises unless the broker confirms
        channel.basic_publish(
            exchange=f"{namespace}.jobs",
            routing_key="notification",
            body=json.dumps(job).encode(),
            properties=pika.BasicProperties(
                content_type="application/json",
                delivery_mode=pika.DeliveryMode.Persistent,
                message_id=job["id"],
                type="notification.v1",  # the contract's version
            ),
            mandatory=True,  # an unroutable job is an error, not a silent loss
        )
    except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as error:
        print(f"the broker did not take the job: {error}", file=sys.stderr)
        return 1
    finally:
        connection.close()
    print(job["id"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
