"""An S3-compatible server on 127.0.0.1 for the object-storage tests (moto's server mode),
and a few client calls the tests make on the store behind sspo-run's back.

    s3_server.py serve BUCKET          # prints `port N`, serves until stdin closes
    s3_server.py list URL BUCKET PREFIX  # one `key size` line per object
    s3_server.py put URL BUCKET KEY    # the object's body from stdin
    s3_server.py cat URL BUCKET KEY    # the object's body to stdout
    s3_server.py delete URL BUCKET KEY

Credentials are the fixed test values the tests also give sspo-run (moto checks none).
"""

import os
import sys


def client(url):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=url,
        aws_access_key_id="test-access-key",
        aws_secret_access_key="test-secret-key",
        region_name="us-east-1",
    )


def serve(bucket):
    import socket

    from moto.server import ThreadedMotoServer

    # moto's server waits for its port to answer, which port 0 never does: take a free
    # port from the kernel first.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    client(f"http://127.0.0.1:{port}").create_bucket(Bucket=bucket)
    print(f"port {port}", flush=True)
    # The test holds our stdin; when it closes (the test ends or dies) we stop.
    sys.stdin.read()
    # The server's thread does not always stop when asked: leave at once.
    os._exit(0)


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "serve":
        serve(args[0])
        return
    url, bucket = args[0], args[1]
    c = client(url)
    if cmd == "list":
        pages = c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=args[2])
        for page in pages:
            for o in page.get("Contents", []):
                print(o["Key"], o["Size"])
    elif cmd == "put":
        c.put_object(Bucket=bucket, Key=args[2], Body=sys.stdin.buffer.read())
    elif cmd == "cat":
        sys.stdout.buffer.write(c.get_object(Bucket=bucket, Key=args[2])["Body"].read())
    elif cmd == "delete":
        c.delete_object(Bucket=bucket, Key=args[2])
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
