"""Clients for the routing tests; each prints one JSON object of what it saw.

  route_client.py http1 ADDR PATH COUNT [METHOD]  COUNT requests on one keep-alive
                                                  connection: {"answers": {body: n},
                                                  "statuses": {status: n}}
  route_client.py grpc ADDR METHOD COUNT [TIMEOUT] COUNT unary calls on one HTTP/2
                                                  channel, 16 in flight at a time, as a
                                                  busy gRPC client multiplexes them:
                                                  {"answers": {reply: n}, "codes": {code: n}}
"""
import collections
import http.client
import json
import sys

import grpc


def http1(address, path, count, method="GET"):
    host, port = address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    answers, statuses = collections.Counter(), collections.Counter()
    for _ in range(count):
        connection.request(method, path, body=b"" if method == "POST" else None)
        response = connection.getresponse()
        body = response.read().decode(errors="replace").strip()
        statuses[response.status] += 1
        answers[body if response.status == 200 else f"{response.status}"] += 1
    print(json.dumps({"answers": answers, "statuses": statuses}))


def grpc_calls(address, method, count, timeout=20.0, in_flight=16):
    answers, codes = collections.Counter(), collections.Counter()
    with grpc.insecure_channel(address) as channel:
        rpc = channel.unary_unary(method)
        pending = collections.deque()

        def settle(call):
            try:
                answers[call.result().decode()] += 1
                codes["OK"] += 1
            except grpc.RpcError as e:
                codes[e.code().name] += 1

        for _ in range(count):
            if len(pending) >= in_flight:
                settle(pending.popleft())
            pending.append(rpc.future(b"order", timeout=timeout))
        while pending:
            settle(pending.popleft())
    print(json.dumps({"answers": answers, "codes": codes}))


if __name__ == "__main__":
    kind, address, target, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    if kind == "http1":
        http1(address, target, count, *sys.argv[5:])
    else:
        grpc_calls(address, target, count, *(float(a) for a in sys.argv[5:]))
