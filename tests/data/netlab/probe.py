#!/usr/bin/python3
"""Network probes, run the same way inside a sandbox and straight from the
lab's host-side netns (negative controls). One result line per probe.

  probe.py dns NAME [TYPE [SERVER]]   -> "dns rcode=N answers=A,B" | "dns error ..."
  probe.py udp HOST PORT              -> "udp echo" | "udp timeout" | "udp error errno=N"
  probe.py icmp HOST                  -> "icmp raw ..." and "icmp dgram ..." lines
  probe.py tcp HOST PORT [HOSTHDR]    -> "tcp ok <body line>" | "tcp error errno=N" | "tcp closed"
  probe.py connect PROXYPORT HOST:PORT HOSTHDR [SNI CAFILE]
        HTTP CONNECT through 127.0.0.1:PROXYPORT, then plain HTTP with Host
        HOSTHDR (or TLS with SNI when given) -> "connect status=N" then
        "tunnel ok <body line>" | "tunnel refused <what>"
  probe.py absolute PROXYPORT URL HOSTHDR
        GET URL (absolute form) through 127.0.0.1:PROXYPORT with Host HOSTHDR
        -> "absolute status=N <body line>" | "absolute refused <what>"
  probe.py pipeline HOST PORT TARGET1 HOST1 TARGET2 HOST2
        two requests one after the other on one keep-alive connection to
        HOST:PORT (TARGET "/" or an absolute URL for a proxy)
        -> "pipeline first=<body line> second=<body line>|second=closed|..."
  probe.py raw HOST PORT PART [PART...]
        sends the PARTs (backslash escapes decoded) 0.3 s apart on one
        connection, then reads to EOF -> "raw ok <status> | <body line>" |
        "raw closed" | "raw error ..."
  probe.py check                      -> lab self-test from the host side; exit 1 on failure
"""
import errno
import os
import random
import socket
import ssl
import struct
import sys

TIMEOUT = 2.0


def family(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def dns_query(name, qtype="A", server="203.0.113.53"):
    types = {"A": 1, "AAAA": 28, "TXT": 16}
    ident = random.randrange(65536)
    q = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\0" + struct.pack("!HH", types[qtype], 1)
    s = socket.socket(family(server), socket.SOCK_DGRAM)
    s.settimeout(TIMEOUT)
    try:
        s.sendto(q, (server, 53))
        data = s.recv(4096)
    except socket.timeout:
        return "dns error timeout"
    except OSError as e:
        return "dns error errno=%d" % e.errno
    rid, flags, qd, an = struct.unpack("!HHHH", data[:8])
    if rid != ident:
        return "dns error bad-id"
    i = 12
    for _ in range(qd):
        while data[i] != 0:
            if data[i] & 0xC0:
                i += 1
                break
            i += 1 + data[i]
        i += 5
    answers = []
    for _ in range(an):
        if data[i] & 0xC0:
            i += 2
        else:
            while data[i] != 0:
                i += 1 + data[i]
            i += 1
        rtype, rclass, ttl, rdlen = struct.unpack("!HHIH", data[i:i + 10])
        i += 10
        rdata = data[i:i + rdlen]
        i += rdlen
        if rtype == 1:
            answers.append(socket.inet_ntoa(rdata))
        elif rtype == 28:
            answers.append(socket.inet_ntop(socket.AF_INET6, rdata))
    return "dns rcode=%d answers=%s" % (flags & 0xF, ",".join(answers))


def udp(host, port):
    try:
        s = socket.socket(family(host), socket.SOCK_DGRAM)
        s.settimeout(TIMEOUT)
        s.sendto(b"ultari-udp-probe", (host, int(port)))
        data = s.recv(4096)
        return "udp echo" if data == b"ultari-udp-probe" else "udp other %r" % data
    except socket.timeout:
        return "udp timeout"
    except OSError as e:
        return "udp error errno=%d" % e.errno


def checksum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def icmp(host):
    v6 = ":" in host
    lines = []
    for kind, stype in (("raw", socket.SOCK_RAW), ("dgram", socket.SOCK_DGRAM)):
        try:
            proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
            s = socket.socket(family(host), stype, proto)
            s.settimeout(TIMEOUT)
            t = 128 if v6 else 8
            pkt = struct.pack("!BBHHH", t, 0, 0, 0x4242, 1) + b"ultari-ping"
            if not v6:
                pkt = pkt[:2] + struct.pack("!H", checksum(pkt)) + pkt[4:]
            s.sendto(pkt, (host, 0))
            while True:
                data = s.recv(4096)
                if stype == socket.SOCK_RAW and not v6:
                    data = data[(data[0] & 0x0F) * 4:]
                if data[0] in (0, 129):
                    lines.append("icmp %s reply" % kind)
                    break
        except socket.timeout:
            lines.append("icmp %s timeout" % kind)
        except OSError as e:
            lines.append("icmp %s error errno=%d" % (kind, e.errno))
    return "\n".join(lines)


def http_exchange(sock, host_header, method="GET", target="/"):
    sock.sendall(("%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: ultari-probe\r\nConnection: close\r\n\r\n"
                  % (method, target, host_header)).encode())
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def body_line(data):
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b"\r\n")[0].decode("latin-1")
    return status, body.decode("latin-1").strip().split("\n")[0]


def tcp(host, port, host_header=None):
    try:
        s = socket.create_connection((host, int(port)), timeout=TIMEOUT)
        data = http_exchange(s, host_header or host)
    except socket.timeout:
        return "tcp error timeout"
    except OSError as e:
        return "tcp error errno=%d" % e.errno
    if not data:
        return "tcp closed"
    status, line = body_line(data)
    return "tcp ok %s | %s" % (status, line)


def read_head(sock):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data


def connect(proxy_port, target, host_header, sni=None, cafile=None):
    out = []
    try:
        s = socket.create_connection(("127.0.0.1", int(proxy_port)), timeout=TIMEOUT)
        s.sendall(("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, target)).encode())
        head = read_head(s)
        if not head:
            return "connect closed"
        code = head.split(b" ")[1].decode() if b" " in head else "?"
        out.append("connect status=%s" % code)
        if code != "200":
            return "\n".join(out)
        if sni:
            ctx = ssl.create_default_context(cafile=cafile)
            s = ctx.wrap_socket(s, server_hostname=sni)
        data = http_exchange(s, host_header)
        if not data:
            out.append("tunnel refused closed")
        else:
            status, line = body_line(data)
            out.append(("tunnel ok %s | %s" if " 200 " in status + " " else "tunnel refused %s | %s") % (status, line))
    except socket.timeout:
        out.append("tunnel refused timeout")
    except ssl.SSLError as e:
        out.append("tunnel refused tls %s" % e.reason)
    except OSError as e:
        out.append("tunnel refused errno=%s" % e.errno)
    return "\n".join(out)


def absolute(proxy_port, url, host_header):
    try:
        s = socket.create_connection(("127.0.0.1", int(proxy_port)), timeout=TIMEOUT)
        data = http_exchange(s, host_header, target=url)
    except socket.timeout:
        return "absolute refused timeout"
    except OSError as e:
        return "absolute refused errno=%d" % e.errno
    if not data:
        return "absolute refused closed"
    status, line = body_line(data)
    return "absolute status=%s %s" % (status.split(" ")[1] if " " in status else "?", line)


def read_response(sock):
    """One HTTP/1.1 response with a Content-Length; b"" when the peer closed."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v.strip())
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def pipeline(host, port, target1, host1, target2, host2):
    try:
        s = socket.create_connection((host, int(port)), timeout=TIMEOUT)
        s.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: ultari-probe\r\n\r\n" % (target1, host1)).encode())
        first = read_response(s)
        if not first:
            return "pipeline first=closed"
        out = "pipeline first=%s" % body_line(first)[1]
        try:
            s.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: ultari-probe\r\nConnection: close\r\n\r\n"
                       % (target2, host2)).encode())
            second = read_response(s)
            status, line = body_line(second) if second else ("", "closed")
            return out + " second=%s %s" % (status.replace(" ", "_"), line)
        except socket.timeout:
            return out + " second=timeout"
        except OSError as e:
            return out + " second=errno=%d" % e.errno
    except socket.timeout:
        return "pipeline error timeout"
    except OSError as e:
        return "pipeline error errno=%d" % e.errno


def raw(host, port, *parts):
    import codecs
    import time
    try:
        s = socket.create_connection((host, int(port)), timeout=TIMEOUT)
        for i, part in enumerate(parts):
            if i:
                time.sleep(0.3)
            s.sendall(codecs.decode(part, "unicode_escape").encode("latin-1"))
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except socket.timeout:
        return "raw error timeout"
    except OSError as e:
        return "raw error errno=%d" % e.errno
    if not data:
        return "raw closed"
    status, line = body_line(data)
    return "raw ok %s | %s" % (status, line)


def check():
    """Every lab server answers (run from the host-side netns)."""
    failures = []
    for addr, name in (("203.0.113.10", "allowed.test"), ("203.0.113.11", "other.test"),
                       ("10.99.0.10", "private.test"), ("2001:db8::1", "v6.test")):
        r = tcp(addr, 80, name)
        if "server=" + name not in r:
            failures.append("http %s: %s" % (addr, r))
        try:
            ctx = ssl.create_default_context(cafile=os.environ.get("LAB_CA"))
            s = socket.create_connection((addr, 443), timeout=TIMEOUT)
            s = ctx.wrap_socket(s, server_hostname=name if name != "v6.test" else addr)
            status, line = body_line(http_exchange(s, name))
            if "scheme=https" not in line:
                failures.append("https %s: %s" % (addr, line))
        except OSError as e:
            failures.append("https %s: %s" % (addr, e))
    r = tcp("203.0.113.10", 8080, "allowed.test")
    if "port=8080" not in r:
        failures.append("http 8080: " + r)
    for addr in ("203.0.113.10", "2001:db8::1"):
        r = udp(addr, 9999)
        if r != "udp echo":
            failures.append("udp %s: %s" % (addr, r))
    r = dns_query("allowed.test")
    if r != "dns rcode=0 answers=203.0.113.10":
        failures.append("dns: " + r)
    for f in failures:
        print(f)
    return 1 if failures else 0


def main(argv):
    cmd = argv[0]
    if cmd == "dns":
        print(dns_query(*argv[1:]))
    elif cmd == "udp":
        print(udp(*argv[1:]))
    elif cmd == "icmp":
        print(icmp(*argv[1:]))
    elif cmd == "tcp":
        print(tcp(*argv[1:]))
    elif cmd == "connect":
        print(connect(*argv[1:]))
    elif cmd == "absolute":
        print(absolute(*argv[1:]))
    elif cmd == "pipeline":
        print(pipeline(*argv[1:]))
    elif cmd == "raw":
        print(raw(*argv[1:]))
    elif cmd == "check":
        return check()
    else:
        print("unknown probe " + cmd)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
