"""A gRPC client for cohort's integration tests (tests/it/grpc.rs).

Usage: client.py TARGET [--ca PEM] < calls.json
calls.json: a list of {"method": "ModelInfer"|"ModelStream"|"Fail",
"request": str, "metadata": [[k, v], ...], "timeout": seconds}.
Prints one JSON list: per call its code, details, initial and trailing
metadata and the response messages (each decoded as text).
"""

import json
import sys

import grpc

SERVICE = "/inference.GRPCInferenceService/"


def md(pairs):
    return {k: v for k, v in (pairs or ()) if not k.endswith("-bin")}


def main():
    target = sys.argv[1]
    ca = None
    if len(sys.argv) > 3 and sys.argv[2] == "--ca":
        ca = open(sys.argv[3], "rb").read()
    options = [("grpc.enable_http_proxy", 0), ("grpc.enable_retries", 0)]
    if ca:
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(ca), options)
    else:
        channel = grpc.insecure_channel(target, options)
    out = []
    for call in json.load(sys.stdin):
        method = call["method"]
        request = call.get("request", "").encode()
        metadata = [tuple(p) for p in call.get("metadata", [])]
        timeout = call.get("timeout", 10)
        result = {"method": method}
        try:
            if method == "ModelStream":
                it = channel.unary_stream(SERVICE + method)(
                    request, metadata=metadata, timeout=timeout
                )
                result["initial"] = md(it.initial_metadata())
                result["responses"] = [r.decode() for r in it]
                result["trailing"] = md(it.trailing_metadata())
                result["code"] = it.code().name
                result["details"] = it.details()
            else:
                resp, c = channel.unary_unary(SERVICE + method).with_call(
                    request, metadata=metadata, timeout=timeout
                )
                result["initial"] = md(c.initial_metadata())
                result["responses"] = [resp.decode()]
                result["trailing"] = md(c.trailing_metadata())
                result["code"] = c.code().name
                result["details"] = c.details()
        except grpc.RpcError as e:
            result["code"] = e.code().name
            result["details"] = e.details()
            result["initial"] = md(e.initial_metadata())
            result["trailing"] = md(e.trailing_metadata())
            result["responses"] = []
        out.append(result)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
