#!/usr/bin/python3
"""Upstream proxies for the attack tests (tests/integration/attack_upstream_test.cpp).

usage: attack_proxy.py DIR ADDR PORT MODE [USER:PASSWORD]

MODE
  keepalive  A forwarding proxy that, like squid, reads request after request
             on one client connection and sends each to the host its own
             absolute target names (a fresh server connection per request,
             "Connection: close" towards the server), the body framed by
             Content-Length or chunked. CONNECT to port 443 only. TRACE with
             "Max-Forwards: 0" is answered by the proxy itself with the request
             it received (RFC 9110 9.3.8; squid's clientReplyContext::traceReply
             does the same, headers included). Parsed as leniently as the lab's
             upstream_proxy.py and servers.py do it: a header's name is
             str.strip()ped, the method is whatever precedes the first space, a
             chunked body ends with the one line read after the last chunk.
  after200   CONNECT is answered "200" and, in the same write, bytes that are
             not the server's (a fake HTTP response); then the tunnel.
  stall      CONNECT is answered with half a status line; a second later the
             proxy closes the connection.
  bighead    CONNECT is answered "200" with a head of 20000 bytes.

With USER:PASSWORD every request needs Basic proxy credentials (407 and close
otherwise). Names are resolved with dns_server.TABLE (anything else as it is).
Every request is logged to DIR/attack_proxy.jsonl as {"port", "mode", "method",
"target", "auth", "status", "headers"}; DIR/attack-proxy-PORT.ready appears
once it listens.
"""
import base64
import json
import os
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from upstream_proxy import pump, resolve  # noqa: E402

LOCK = threading.Lock()


def log(directory, entry):
    with LOCK, open(os.path.join(directory, "attack_proxy.jsonl"), "a") as f:
        f.write(json.dumps(entry) + "\n")


def answer(client, status, text, body=None, ctype="text/plain"):
    extra = 'Proxy-Authenticate: Basic realm="lab"\r\n' if status == 407 else ""
    body = body if body is not None else ("attack proxy: %s\n" % text).encode()
    client.sendall(("HTTP/1.1 %d %s\r\n%sContent-Type: %s\r\nContent-Length: %d\r\n\r\n" %
                    (status, text, extra, ctype, len(body))).encode() + body)


def read_head(f):
    """Lines up to the blank line (str, latin-1), or None at EOF."""
    lines = []
    while True:
        line = f.readline(65536)
        if not line:
            return None
        if line in (b"\r\n", b"\n"):
            if not lines:
                continue  # an empty line before a request (RFC 9112 2.2)
            return "\r\n".join(lines)
        lines.append(line.rstrip(b"\r\n").decode("latin-1"))


def read_chunked(f):
    """As servers.py reads it: the line after the last chunk ends the body."""
    body = b""
    while True:
        size = int(f.readline().split(b";")[0].strip() or b"0", 16)
        if size == 0:
            f.readline()
            return body
        body += f.read(size)
        f.readline()


def parse(head):
    lines = head.split("\r\n")
    method, target, version = lines[0].split(" ", 2)
    headers = [l.split(":", 1) for l in lines[1:] if ":" in l]
    fields = {}
    for k, v in headers:
        fields.setdefault(k.strip().lower(), v.strip())
    return method, target, version, headers, fields


def tunnel(client, host, port, pre=b""):
    server = socket.create_connection((resolve(host), int(port)), timeout=5)
    if pre:
        server.sendall(pre)
    server.settimeout(None)
    client.settimeout(None)
    pump(client, server)
    server.close()


def serve_keepalive(client, f, directory, port, want):
    while True:
        head = read_head(f)
        if head is None:
            return
        try:
            method, target, version, headers, fields = parse(head)
        except ValueError:
            log(directory, {"port": port, "mode": "keepalive", "error": "bad request line", "head": head[:200]})
            answer(client, 400, "Bad Request")
            return
        auth = fields.get("proxy-authorization")
        entry = {"port": port, "mode": "keepalive", "method": method, "target": target, "auth": auth,
                 "headers": [k.strip().lower() for k, v in headers]}
        if want and auth != want:
            entry["status"] = 407
            log(directory, entry)
            answer(client, 407, "Proxy Authentication Required")
            return
        if method == "CONNECT":
            host, _, p = target.rpartition(":")
            entry["status"] = 200 if p == "443" else 403
            log(directory, entry)
            if p != "443":
                answer(client, 403, "Forbidden")
                return
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            tunnel(client, host, p)
            return
        if fields.get("transfer-encoding", "").lower() == "chunked":
            body = read_chunked(f)
        else:
            body = f.read(int(fields.get("content-length", "0") or "0"))
        if method == "TRACE" and fields.get("max-forwards") == "0":
            entry["status"] = 200
            log(directory, entry)
            answer(client, 200, "OK", (head + "\r\n\r\n").encode("latin-1"), "message/http")
            if fields.get("connection", "").lower() == "close":
                return
            continue
        if not target.startswith("http://"):
            entry["status"] = 400
            log(directory, entry)
            answer(client, 400, "Bad Request")
            return
        authority, _, path = target[7:].partition("/")
        host, _, p = authority.partition(":")
        entry["status"] = 200
        log(directory, entry)
        drop = ("connection", "keep-alive", "upgrade", "content-length", "transfer-encoding", "te")
        out = ["%s /%s %s" % (method, path, version)]
        out += ["%s:%s" % (k, v) for k, v in headers
                if not k.strip().lower().startswith("proxy-") and k.strip().lower() not in drop]
        out += ["Content-Length: %d" % len(body)] if body else []
        out += ["Connection: close"]
        try:
            server = socket.create_connection((resolve(host), int(p or 80)), timeout=5)
            server.sendall(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + body)
            response = b""
            while True:
                chunk = server.recv(65536)
                if not chunk:
                    break
                response += chunk
            server.close()
        except OSError as e:
            answer(client, 502, "Bad Gateway", ("attack proxy: %s\n" % e).encode())
            if fields.get("connection", "").lower() == "close":
                return
            continue
        client.sendall(response)
        if fields.get("connection", "").lower() == "close":
            return


def serve(client, directory, port, mode, credentials):
    want = "Basic " + base64.b64encode(credentials.encode()).decode() if credentials else None
    f = client.makefile("rb")
    try:
        if mode == "keepalive":
            serve_keepalive(client, f, directory, port, want)
            return
        head = read_head(f)
        if head is None:
            return
        method, target, version, headers, fields = parse(head)
        auth = fields.get("proxy-authorization")
        entry = {"port": port, "mode": mode, "method": method, "target": target, "auth": auth,
                 "headers": [k.strip().lower() for k, v in headers]}
        if method != "CONNECT" or (want and auth != want):
            entry["status"] = 407 if method == "CONNECT" else 400
            log(directory, entry)
            answer(client, entry["status"], "Refused")
            return
        host, _, p = target.rpartition(":")
        entry["status"] = 200
        log(directory, entry)
        if mode == "after200":
            fake = b"lab proxy bytes, not the server's\n"
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n" +
                           b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(fake) + fake)
            tunnel(client, host, p)
        elif mode == "stall":
            client.sendall(b"HTTP/1.1 200 Conn")
            time.sleep(1)
        elif mode == "bighead":
            client.sendall(b"HTTP/1.1 200 Connection established\r\nX-Pad: " + b"a" * 20000 + b"\r\n\r\n")
            tunnel(client, host, p)
    except Exception as e:  # a broken client: log and drop
        log(directory, {"port": port, "mode": mode, "error": repr(e)})
    finally:
        try:
            client.close()
        except OSError:
            pass


def main(directory, addr, port, mode, credentials=None):
    port = int(port)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(64)
    open(os.path.join(directory, "attack-proxy-%d.ready" % port), "w").close()
    while True:
        c, _ = s.accept()
        c.settimeout(10)
        threading.Thread(target=serve, args=(c, directory, port, mode, credentials), daemon=True).start()


if __name__ == "__main__":
    main(*sys.argv[1:6])
