"""worker.py from the work-queues tutorial, run as a separate process by the tests.

    python tutorial_worker.py HOST PORT QUEUE [VHOST]

Declares the durable queue, sets basic_qos(prefetch_count=1), consumes with
manual acks. Prints ``ready`` once consuming and ``received <body>`` for each
task, then "works" on it forever (never acks), so the test can SIGKILL it
mid-task and check that the broker redelivers the task to another worker.
"""

import sys
import time

import pika


def main() -> None:
    host, port, queue = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    vhost = sys.argv[4] if len(sys.argv) > 4 else "/"
    connection = pika.BlockingConnection(
        pika.ConnectionParameters(host=host, port=port, virtual_host=vhost, heartbeat=0,
                                  connection_attempts=1, socket_timeout=5))
    channel = connection.channel()
    channel.queue_declare(queue=queue, durable=True)

    def callback(ch, method, properties, body):
        print("received " + body.decode(), flush=True)
        # The task takes "forever": the test kills us here, before basic_ack.
        time.sleep(3600)
        ch.basic_ack(delivery_tag=method.delivery_tag)

    channel.basic_qos(prefetch_count=1)
    channel.basic_consume(queue=queue, on_message_callback=callback)
    print("ready", flush=True)
    channel.start_consuming()


if __name__ == "__main__":
    main()
