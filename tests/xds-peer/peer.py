"""A proxyless gRPC peer for the xDS tests: gRPC's own xDS client and xDS-enabled server.

    peer.py server --port P --reply TEXT    an xDS-enabled gRPC server (its Listener, RBAC
                                            and mTLS come from the control plane)
    peer.py client --target xds:///svc.mesh:port --calls N [--header k=v] [--hold S]
                                            N unary calls; prints {"replies": {TEXT: count},
                                            "errors": {code: count}} as JSON, then keeps
                                            the channel (and its xDS stream) open S seconds

Both read GRPC_XDS_BOOTSTRAP. The service is `reviews.Reviews/Get`, bytes in, bytes out, so
that no generated code is needed.
"""

import argparse
import collections
import json
import sys
import time
from concurrent import futures

import grpc
import grpc.experimental

METHOD = "/reviews.Reviews/Get"


def serve(args):
    reply = args.reply.encode()

    def get(request, context):
        return reply

    handler = grpc.method_handlers_generic_handler(
        "reviews.Reviews", {"Get": grpc.unary_unary_rpc_method_handler(get)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), xds=True)
    server.add_generic_rpc_handlers((handler,))
    creds = grpc.xds_server_credentials(grpc.insecure_server_credentials())
    server.add_secure_port(f"0.0.0.0:{args.port}", creds)
    server.start()
    print(f"started on {args.port}", flush=True)
    server.wait_for_termination()


def report(replies, errors, details, args, channel):
    print(json.dumps({"replies": replies, "errors": errors, "details": details}), flush=True)
    time.sleep(args.hold)
    channel.close()


def client(args):
    creds = grpc.xds_channel_credentials(grpc.experimental.insecure_channel_credentials())
    channel = grpc.secure_channel(args.target, creds)
    call = channel.unary_unary(METHOD)
    metadata = [tuple(h.split("=", 1)) for h in args.header]
    replies = collections.Counter()
    errors = collections.Counter()
    details = {}
    deadline = time.time() + args.ready_timeout
    # The first call waits until the channel has its listener, routes, clusters and endpoints.
    while True:
        try:
            replies[call(b"", metadata=metadata, timeout=5, wait_for_ready=True).decode()] += 1
            break
        except grpc.RpcError as e:
            if time.time() > deadline:
                errors[e.code().name] += 1
                details[e.code().name] = e.details()
                report(replies, errors, details, args, channel)
                return 1
            time.sleep(0.2)
    for _ in range(args.calls - 1):
        try:
            replies[call(b"", metadata=metadata, timeout=5).decode()] += 1
        except grpc.RpcError as e:
            errors[e.code().name] += 1
            details[e.code().name] = e.details()
    report(replies, errors, details, args, channel)
    return 0


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("server")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--reply", required=True)
    c = sub.add_parser("client")
    c.add_argument("--target", required=True)
    c.add_argument("--calls", type=int, default=1)
    c.add_argument("--header", action="append", default=[])
    c.add_argument("--ready-timeout", type=float, default=30)
    c.add_argument("--hold", type=float, default=0)
    args = p.parse_args()
    sys.exit(serve(args) if args.mode == "server" else client(args))


if __name__ == "__main__":
    main()
