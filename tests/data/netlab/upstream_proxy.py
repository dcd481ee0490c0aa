#!/usr/bin/python3
"""The lab's corporate proxy: what --net-upstream chains to.

usage: upstream_proxy.py DIR ADDR PORT [USER:PASSWORD]

An HTTP proxy in the lab's internet, strict the way corporate proxies are
by default (squid's SSL_ports): CONNECT only to port 443, plain HTTP only as
absolute-form requests. With USER:PASSWORD it wants Basic proxy credentials
(407 otherwise). Names are resolved with dns_server.TABLE. Every request is
logged to DIR/proxy.jsonl as {"port", "method", "target", "auth", "status",
"headers"} (auth: the Proxy-Authorization value, or null); DIR/proxy-PORT.ready
appears once it listens.
"""
import base64
import json
import os
import select
import socket
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dns_server import TABLE  # noqa: E402

LOCK = threading.Lock()


def log(directory, entry):
    with LOCK, open(os.path.join(directory, "proxy.jsonl"), "a") as f:
        f.write(json.dumps(entry) + "\n")


def read_head(sock):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return None, b""
        data += chunk
        if len(data) > 65536:
            return None, b""
    head, rest = data.split(b"\r\n\r\n", 1)
    return head.decode("latin-1"), rest


def pump(a, b):
    socks = [a, b]
    while socks:
        readable, _, _ = select.select(socks, [], [], 30)
        if not readable:
            return
        for s in readable:
            other = b if s is a else a
            try:
                data = s.recv(65536)
            except OSError:
                data = b""
            if not data:
                socks.remove(s)
                try:
                    other.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                continue
            other.sendall(data)


def resolve(host):
    return TABLE.get(host.lower().rstrip("."), host)


def answer(client, status, text):
    extra = 'Proxy-Authenticate: Basic realm="lab"\r\n' if status == 407 else ""
    body = ("lab proxy: %s\n" % text).encode()
    client.sendall(("HTTP/1.1 %d %s\r\n%sContent-Length: %d\r\nConnection: close\r\n\r\n" %
                    (status, text, extra, len(body))).encode() + body)


def serve(client, directory, port, credentials):
    try:
        head, rest = read_head(client)
        if head is None:
            return
        lines = head.split("\r\n")
        method, target, version = lines[0].split(" ", 2)
        headers = [l.split(":", 1) for l in lines[1:] if ":" in l]
        auth = next((v.strip() for k, v in headers if k.strip().lower() == "proxy-authorization"), None)
        entry = {"port": port, "method": method, "target": target, "auth": auth,
                 "headers": [k.strip().lower() for k, v in headers]}
        want = "Basic " + base64.b64encode(credentials.encode()).decode() if credentials else None
        if want and auth != want:
            entry["status"] = 407
            log(directory, entry)
            answer(client, 407, "Proxy Authentication Required")
            return
        if method == "CONNECT":
            host, _, p = target.rpartition(":")
            if p != "443":
                entry["status"] = 403
                log(directory, entry)
                answer(client, 403, "Forbidden")
                return
            server = socket.create_connection((resolve(host), int(p)), timeout=5)
            entry["status"] = 200
            log(directory, entry)
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            if rest:
                server.sendall(rest)
        else:
            if not target.startswith("http://"):
                entry["status"] = 400
                log(directory, entry)
                answer(client, 400, "Bad Request")
                return
            authority, slash, path = target[7:].partition("/")
            host, _, p = authority.partition(":")
            server = socket.create_connection((resolve(host), int(p or 80)), timeout=5)
            entry["status"] = 200
            log(directory, entry)
            out = ["%s /%s %s" % (method, path, version)]
            out += ["%s:%s" % (k, v) for k, v in headers if not k.strip().lower().startswith("proxy-")]
            server.sendall(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + rest)
        server.settimeout(None)
        client.settimeout(None)
        pump(client, server)
        server.close()
    except Exception as e:  # a broken client: log and drop
        log(directory, {"port": port, "error": repr(e)})
    finally:
        client.close()


def main(directory, addr, port, credentials=None):
    port = int(port)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(64)
    open(os.path.join(directory, "proxy-%d.ready" % port), "w").close()
    while True:
        c, _ = s.accept()
        c.settimeout(10)
        threading.Thread(target=serve, args=(c, directory, port, credentials), daemon=True).start()


if __name__ == "__main__":
    main(*sys.argv[1:5])
