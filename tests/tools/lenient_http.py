#!/usr/bin/env python3
"""An HTTP/1 app as lenient as Python's http.server is (any whitespace between the words
of the request line), answering each request with the headers it received as JSON. It
prints its port, then serves until killed.

    lenient_http.py serve
"""
import http.server
import json
import sys


class Echo(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({name.lower(): value for name, value in self.headers.items()}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


if __name__ == "__main__" and sys.argv[1:] == ["serve"]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    print(server.server_address[1], flush=True)
    server.serve_forever()
