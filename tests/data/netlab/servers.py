#!/usr/bin/python3
"""The lab's "internet" servers, run inside the internet netns.

usage: servers.py DIR      (DIR holds server.pem/server.key; logs go there)

- HTTP/1.1 (keep-alive) :80 and HTTPS :443 on every server address (and HTTP :8080 on
  203.0.113.10). The body names the server and what it received:
    lab server=NAME addr=ADDR port=PORT scheme=http|https host=HOST sni=SNI method=M path=P
  Every request is appended to DIR/requests.jsonl (one JSON object a line:
  server, addr, port, scheme, sni, peer, method, path, host, headers,
  body_len, body).
- UDP echo on 203.0.113.10:9999 and [2001:db8::1]:9999, logged to DIR/udp.log.
- ICMP / ICMPv6 echo requests arriving are logged to DIR/icmp.log (the kernel
  answers them).
- DIR/ready is created once every socket is bound.
"""
import http.server
import json
import urllib.parse
import os
import socket
import ssl
import sys
import threading
import time

SERVERS = [("203.0.113.10", "allowed.test"), ("203.0.113.11", "other.test"),
           ("10.99.0.10", "private.test"), ("2001:db8::1", "v6.test")]
EXTRA_HTTP = [("203.0.113.10", "allowed.test", 8080)]
UDP_ECHO = ["203.0.113.10", "2001:db8::1"]

lock = threading.Lock()
tls_state = threading.local()


def log(path, line):
    with lock:
        with open(path, "a") as f:
            f.write(line + "\n")


def make_handler(directory, name, addr, port, scheme):
    class Handler(http.server.BaseHTTPRequestHandler):
        timeout = 10
        server_version = "UltariLab/1"
        protocol_version = "HTTP/1.1"  # keep-alive: several requests on one connection

        def log_message(self, fmt, *args):
            pass

        def not_found(self):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def handle_any(self):
            body = b""
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        self.rfile.readline()
                        break
                    body += self.rfile.read(size)
                    self.rfile.readline()
            else:
                length = int(self.headers.get("Content-Length", "0") or "0")
                body = self.rfile.read(length) if length > 0 else b""
            host = self.headers.get("Host", "")
            sni = getattr(self.connection, "lab_sni", None)
            entry = {"time": time.time(), "server": name, "addr": addr, "port": port, "scheme": scheme,
                     "sni": sni, "peer": self.client_address[0], "method": self.command, "path": self.path,
                     "host": host, "headers": [[k, v] for k, v in self.headers.items()],
                     "body_len": len(body), "body": body[:65536].decode("latin-1")}
            log(os.path.join(directory, "requests.jsonl"), json.dumps(entry))
            out = ("lab server=%s addr=%s port=%d scheme=%s host=%s sni=%s method=%s path=%s\n" %
                   (name, addr, port, scheme, host, sni or "-", self.command, self.path)).encode()
            ctype = "text/plain"
            # (origin form only: the gateway sends no other to a server)
            path = self.path
            # Files a test put in <lab dir>/files/: GET /files/NAME.
            if path.startswith("/files/"):
                fname = path[len("/files/"):]
                full = os.path.join(directory, "files", fname)
                if not fname.replace(".", "").replace("-", "").replace("_", "").isalnum() or not os.path.exists(full):
                    return self.not_found()
                out = open(full, "rb").read()
                ctype = "application/octet-stream"
            # A package repository a test put in <lab dir>/repo/: GET /repo/PATH
            # (plain names between the slashes).
            if path.startswith("/repo/"):
                parts = path[len("/repo/"):].split("/")
                full = os.path.join(directory, "repo", *parts)
                if not all(p.replace(".", "").replace("-", "").replace("_", "").isalnum() and p.strip(".")
                           for p in parts) or not os.path.isfile(full):
                    return self.not_found()
                out = open(full, "rb").read()
                ctype = "application/octet-stream"
            # Launchpad's API for a PPA: GET /lp/1.0/~OWNER/+archive/ubuntu/NAME
            # answers <lab dir>/lp/OWNER_NAME.json, as a test put it there.
            # (percent-decoded, as servers do: apt-helper sends %7e for '~')
            lp = urllib.parse.unquote(path)
            if lp.startswith("/lp/1.0/~"):
                parts = lp[len("/lp/1.0/~"):].split("/")
                if len(parts) != 4 or parts[1:3] != ["+archive", "ubuntu"]:
                    return self.not_found()
                fname = parts[0] + "_" + parts[3] + ".json"
                full = os.path.join(directory, "lp", fname)
                if not fname.replace(".", "").replace("-", "").replace("_", "").isalnum() or not os.path.exists(full):
                    return self.not_found()
                out = open(full, "rb").read()
                ctype = "application/json"
            # A key server (HKP): GET /pks/lookup?op=get&search=0xID answers
            # <lab dir>/keys/<ID>.asc, as a test put it there.
            if path.startswith("/pks/lookup?"):
                query = urllib.parse.parse_qs(path.split("?", 1)[1])
                wanted = query.get("search", [""])[0].lower()
                wanted = wanted[2:] if wanted.startswith("0x") else wanted
                key = os.path.join(directory, "keys", wanted + ".asc")
                if query.get("op") != ["get"] or not wanted.isalnum() or not os.path.exists(key):
                    return self.not_found()
                out = open(key, "rb").read()
                ctype = "application/pgp-keys"
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(out)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = handle_any

    return Handler


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    tls_context = None

    def finish_request(self, request, client_address):
        if self.tls_context is not None:
            tls_state.sni = None
            request.settimeout(10)
            try:
                request = self.tls_context.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as e:
                log(os.path.join(self.lab_dir, "tls_errors.log"), "%s %s %s" % (self.lab_addr, client_address[0], e))
                return
            request.lab_sni = tls_state.sni
        super().finish_request(request, client_address)


def serve(directory, name, addr, port, scheme, context=None):
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    cls = type("S", (Server,), {"address_family": family})
    srv = cls((addr, port), make_handler(directory, name, addr, port, scheme))
    srv.tls_context = context
    srv.lab_dir, srv.lab_addr = directory, addr
    threading.Thread(target=srv.serve_forever, daemon=True).start()


def udp_echo(directory, addr, port=9999):
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind((addr, port))

    def run():
        while True:
            data, peer = s.recvfrom(65536)
            log(os.path.join(directory, "udp.log"), "%s %s %s:%d %r" % (peer[0], peer[1], addr, port, data[:64]))
            s.sendto(data, peer)

    threading.Thread(target=run, daemon=True).start()


def icmp_sniffer(directory, v6):
    if v6:
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)

    def run():
        while True:
            data, peer = s.recvfrom(65536)
            if v6:
                kind = data[0]
                if kind == 128:
                    log(os.path.join(directory, "icmp.log"), "v6 echo-request from %s" % peer[0])
            else:
                ihl = (data[0] & 0x0F) * 4
                if data[ihl] == 8:
                    dst = socket.inet_ntoa(data[16:20])
                    log(os.path.join(directory, "icmp.log"), "v4 echo-request from %s to %s" % (peer[0], dst))

    threading.Thread(target=run, daemon=True).start()


def main(directory):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(os.path.join(directory, "server.pem"), os.path.join(directory, "server.key"))

    def sni(sock, server_name, context):
        tls_state.sni = server_name

    ctx.sni_callback = sni
    for addr, name in SERVERS:
        serve(directory, name, addr, 80, "http")
        serve(directory, name, addr, 443, "https", ctx)
    for addr, name, port in EXTRA_HTTP:
        serve(directory, name, addr, port, "http")
    for addr in UDP_ECHO:
        udp_echo(directory, addr)
    icmp_sniffer(directory, False)
    icmp_sniffer(directory, True)
    open(os.path.join(directory, "ready"), "w").close()
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main(sys.argv[1])
