"""A gRPC server and client (Python grpcio) for the end-to-end tests, with no generated
code: methods carry raw bytes.

  grpc_echo.py serve [NAME [down]]
                                prints its port, then answers every unary method
                                ("done:<request>", or NAME when given; a method
                                ending in /Hang never answers; with `down`, one ending
                                in /Down sends its headers, then fails UNAVAILABLE in
                                the trailers)
  grpc_echo.py call ADDR METHOD prints "OK <reply>" or "<STATUS_NAME> <details>"
"""
import sys
import time
from concurrent import futures

import grpc


NAME = sys.argv[2].encode() if len(sys.argv) > 2 and sys.argv[1] == "serve" else None
DOWN = len(sys.argv) > 3 and sys.argv[1] == "serve" and sys.argv[3] == "down"


def charge(request, context):
    return NAME if NAME else b"done:" + request


def hang(request, context):
    time.sleep(3600)


def down(request, context):
    if not DOWN:
        return charge(request, context)
    # Headers first, so the status can only come in the trailers (not trailers-only).
    context.send_initial_metadata(())
    context.abort(grpc.StatusCode.UNAVAILABLE, "this replica is going away")


class AnyMethod(grpc.GenericRpcHandler):
    def service(self, handler_call_details):
        if handler_call_details.method.endswith("/Hang"):
            return grpc.unary_unary_rpc_method_handler(hang)
        if handler_call_details.method.endswith("/Down"):
            return grpc.unary_unary_rpc_method_handler(down)
        return grpc.unary_unary_rpc_method_handler(charge)


def serve():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((AnyMethod(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


def call(address, method):
    with grpc.insecure_channel(address) as channel:
        rpc = channel.unary_unary(method)
        try:
            reply = rpc(b"order-42", timeout=20)
            print("OK", reply.decode())
        except grpc.RpcError as e:
            print(e.code().name, e.details())


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve()
    else:
        call(sys.argv[2], sys.argv[3])
