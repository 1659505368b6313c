"""An HTTP/1.1 app for the routing tests, with one behaviour per process:

  route_app.py NAME ok          answers 200 "NAME"
  route_app.py NAME status CODE answers CODE "NAME"
  route_app.py NAME delay MS    answers 200 "NAME" after MS milliseconds
  route_app.py NAME hang        reads the request and never answers

It prints its port, then serves (one thread per connection, keep-alive).
"""
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME, MODE = sys.argv[1], sys.argv[2]
ARG = sys.argv[3] if len(sys.argv) > 3 else None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if MODE == "hang":
            time.sleep(3600)
        if MODE == "delay":
            time.sleep(int(ARG) / 1000)
        status = int(ARG) if MODE == "status" else 200
        body = NAME.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = answer

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print(server.server_address[1], flush=True)
server.serve_forever()
