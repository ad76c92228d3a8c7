"""A tiny gRPC model server for cohort's integration tests (tests/it/grpc.rs).

Generic handlers with raw-bytes messages, so no code generation is needed.
Service /inference.GRPCInferenceService/:
  ModelInfer   unary: answers JSON {"served_by", "request", "metadata"} and
               sets trailing metadata x-served-by and x-trailer-note.
  ModelStream  server streaming: the request is a count N; N JSON messages,
               --gap SECONDS apart.
  Fail         unary: fails with NOT_FOUND and a message of its own.
Usage: server.py NAME [--delay SECONDS] [--gap SECONDS] [--tls CERT KEY [CLIENT_CA]]
Prints "PORT <n>" once it listens on 127.0.0.1, then serves until killed.
"""

import json
import sys
import time
from concurrent import futures

import grpc

SERVICE = "inference.GRPCInferenceService"


def main():
    args = sys.argv[1:]
    name = args.pop(0)
    delay = 0.0
    gap = 0.0
    tls = None
    while args:
        flag = args.pop(0)
        if flag == "--delay":
            delay = float(args.pop(0))
        elif flag == "--gap":
            gap = float(args.pop(0))
        elif flag == "--tls":
            cert, key = args.pop(0), args.pop(0)
            ca = args.pop(0) if args and not args[0].startswith("--") else None
            tls = (cert, key, ca)
        else:
            raise SystemExit(f"unknown flag {flag}")

    def metadata(context):
        return {k: v for k, v in context.invocation_metadata() if not k.endswith("-bin")}

    def infer(request, context):
        time.sleep(delay)
        md = metadata(context)
        context.set_trailing_metadata(
            (("x-served-by", name), ("x-trailer-note", "from-" + name))
        )
        return json.dumps(
            {"served_by": name, "request": request.decode(), "metadata": md}
        ).encode()

    def stream(request, context):
        time.sleep(delay)
        md = metadata(context)
        context.set_trailing_metadata((("x-served-by", name), ("x-stream-count", request.decode())))
        for i in range(int(request.decode())):
            if i:
                time.sleep(gap)
            yield json.dumps({"served_by": name, "seq": i, "unit": md.get("x-user-id")}).encode()

    def fail(request, context):
        context.abort(grpc.StatusCode.NOT_FOUND, "no model named " + request.decode())

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "ModelInfer": grpc.unary_unary_rpc_method_handler(infer),
            "ModelStream": grpc.unary_stream_rpc_method_handler(stream),
            "Fail": grpc.unary_unary_rpc_method_handler(fail),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler,))
    if tls:
        cert, key, ca = tls
        with open(cert, "rb") as c, open(key, "rb") as k:
            pair = [(k.read(), c.read())]
        roots = open(ca, "rb").read() if ca else None
        creds = grpc.ssl_server_credentials(
            pair, root_certificates=roots, require_client_auth=roots is not None
        )
        port = server.add_secure_port("127.0.0.1:0", creds)
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"PORT {port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
