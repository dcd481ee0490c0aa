#!/usr/bin/python3
"""Crafted archives and images for tests/integration/attack_images_test.cpp.

  attack_archives.py make OUT_DIR VICTIM KIND...   crafted archives (KINDs below) at OUT_DIR/KIND.tar
  attack_archives.py naive OUT_DIR ARCHIVE...
        the negative control: extracts each ARCHIVE (layers, bottom first)
        into OUT_DIR the careless way: every link followed, whiteouts applied
        by deleting through the path, PAX xattrs set, owners and devices kept.
  attack_archives.py xattrs DIR             every xattr under DIR (no symlink
                                            followed), "path name" a line
  attack_archives.py owners DIR             "uid path" of every entry

VICTIM is a host directory the attacks aim at; it holds `secret` (a file
reading "host-secret"), `host.tar` (a tar holding `stolen` = "host-secret")
and `blobs/sha256/<sha256 of host.tar>` (the same bytes).

Kinds (rootfs tarballs):
  pax_path       PAX `path` overriding a harmless ustar name with ../../..VICTIM/pwned
  gnu_longname   a GNU long name (././@LongLink) that climbs out to VICTIM/pwned
  pax_linkpath   a hard link whose PAX linkpath climbs out to VICTIM/secret
  dir_swap       d/ (a directory), then d -> VICTIM (a symlink), then d/pwned
  hardlink_sym   s -> VICTIM (symlink), then hl (hard link to s/secret), then
                 hl again as a regular file carrying data
  hardlink_data  f -> VICTIM/secret (symlink), h (hard link to f, size 6, data)
  symlink_over   f -> VICTIM/secret (symlink), then f as a regular file
  xattrs         PAX xattrs: security.capability on bin/cap, trusted.overlay.*,
                 user.overlay.redirect/metacopy/origin on dirs and files
  implicit       a/b/c only (its parent directories are not in the archive)
  setuid         bin/su 4755 of uid 0
  uid_neg, uid_wrap, uid_65536   owners -1, 2^32, 65536 (PAX uid/gid)
  benign         etc/ok: the harmless twin
Image archives (an uncompressed tar of a docker save / OCI layout):
  docker_symlink_layer   manifest layer `layer.tar` is a symlink to VICTIM (a host directory)
  docker_symlink_dir     manifest layer `l/.` where l -> VICTIM (a host directory, walked)
  docker_symlink_tar     manifest layer `l/host.tar` where l -> VICTIM (a host tar)
  docker_fifo_layer      manifest layer `layer.tar` is a FIFO
  docker_device_layer    manifest layer `layer.tar` is a char device (1,3)
  docker_bad_json        manifest Layers holding a number
  docker_benign          the harmless twin: layer.tar a real tar holding stolen
  oci_digest_path        layer digest sha256:../../../../VICTIM/host.tar
  oci_blob_symlink       blobs/sha256/<hex> is a symlink to VICTIM/host.tar (matching digest)
  oci_blobs_dir_symlink  blobs -> VICTIM/blobs (the host tar under its real digest)
  oci_fifo_index         index.json is a FIFO
  oci_benign             the harmless twin: the host tar's bytes as a real blob
  wh_symlink     one layer: esc -> VICTIM, then esc/.wh.secret and esc/.wh..wh..opq
  wh_empty, wh_dot, wh_dotdot, wh_whwh   whiteouts of no name: dir/.wh. dir/.wh.. dir/.wh... .wh..wh.x
Two-layer images (docker archives), layer 1 then layer 2:
  wh_lower_symlink       1: esc -> VICTIM; 2: esc/.wh.secret, esc/.wh..wh..opq
Other:
  deep           1100 nested directories, then an absolute name (refused)
  deep_ok        the same nesting without the bad entry
  collide_a      etc/a ("hello"), etc/b ("world")
  collide_b      etc/a only, its data the framing of etc/b: same layer id?
  sparse_a       a 4096-byte hole then "x" (sparse file); sparse_b: the bytes "hole:4096\\0x"
  bomb           a gzip of 64 MiB of zeros (about 64 KiB)
"""
import base64
import gzip
import hashlib
import io
import json
import os
import stat
import sys
import tarfile

UP = "../" * 40


def secret_tar():
    return tar_bytes(lambda t: add_file(t, "stolen", b"host-secret\n"))


def tar_bytes(add, fmt=tarfile.PAX_FORMAT):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        add(t)
    return buf.getvalue()


def add_file(t, name, data=b"x\n", uid=0, gid=0, mode=0o644, pax=None):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.uid, info.gid, info.mode = uid, gid, mode
    if pax:
        info.pax_headers = pax
    t.addfile(info, io.BytesIO(data))


def add_dir(t, name, mode=0o755, pax=None):
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    if pax:
        info.pax_headers = pax
    t.addfile(info)


def add_link(t, name, target, hard=False, pax=None, data=None):
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    if pax:
        info.pax_headers = pax
    if data is not None:
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    else:
        t.addfile(info)


def add_special(t, name, kind, major=0, minor=0):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.devmajor, info.devminor = major, minor
    t.addfile(info)


def cap_blob():
    # vfs_cap_data v2: every capability permitted and effective.
    return bytes([0x01, 0x00, 0x00, 0x02]) + b"\xff\xff\xff\xff" + b"\x00" * 4 + b"\xff\xff\xff\xff" + b"\x00" * 4


def esc(b):
    return b.decode("utf-8", "surrogateescape")


def rootfs(kind, victim):
    v = victim.lstrip("/")

    def add(t):
        if kind == "benign":
            add_file(t, "etc/ok")
        elif kind == "pax_path":
            add_file(t, "harmless", b"pwned\n", pax={"path": UP + v + "/pwned"})
        elif kind == "gnu_longname":
            pass  # written in GNU format below
        elif kind == "pax_linkpath":
            add_link(t, "harmless", "etc/ok", hard=True, pax={"linkpath": UP + v + "/secret"})
        elif kind == "dir_swap":
            add_dir(t, "d")
            add_link(t, "d", victim)
            add_file(t, "d/pwned", b"pwned\n")
        elif kind == "hardlink_sym":
            add_link(t, "s", victim)
            add_link(t, "hl", "s/secret", hard=True)
            add_file(t, "hl", b"pwned\n")
        elif kind == "hardlink_data":
            add_link(t, "f", victim + "/secret")
            add_link(t, "h", "f", hard=True, data=b"pwned\n")
        elif kind == "symlink_over":
            add_link(t, "f", victim + "/secret")
            add_file(t, "f", b"pwned\n")
        elif kind == "xattrs":
            add_dir(t, "bin")
            add_file(t, "bin/cap", b"#!/bin/sh\n", mode=0o755,
                     pax={"SCHILY.xattr.security.capability": esc(cap_blob())})
            add_dir(t, "redir", pax={"SCHILY.xattr.trusted.overlay.redirect": "/etc",
                                     "SCHILY.xattr.user.overlay.redirect": "/etc",
                                     "SCHILY.xattr.trusted.overlay.opaque": "y",
                                     "SCHILY.xattr.user.overlay.origin": "abc"})
            add_file(t, "meta", b"", pax={"SCHILY.xattr.user.overlay.metacopy": "",
                                          "SCHILY.xattr.trusted.overlay.metacopy": "",
                                          "LIBARCHIVE.xattr.user.overlay.redirect": base64.b64encode(b"/etc/shadow").decode(),
                                          "SCHILY.xattr.user.evil": "1"})
        elif kind == "implicit":
            add_file(t, "a/b/c", b"c\n", uid=1000, gid=1000)
        elif kind == "setuid":
            add_dir(t, "bin")
            add_file(t, "bin/su", b"\x7fELF", mode=0o4755)
        elif kind == "uid_neg":
            add_file(t, "etc/neg", pax={"uid": "-1", "gid": "-1"})
        elif kind == "uid_wrap":
            add_file(t, "etc/wrap", pax={"uid": str(2 ** 32), "gid": str(2 ** 32)})
        elif kind == "uid_65536":
            add_file(t, "etc/big", pax={"uid": "65536", "gid": "0"})
        elif kind == "collide_a":
            add_dir(t, "etc")
            add_file(t, "etc/a", b"hello")
            add_file(t, "etc/b", b"world")
        elif kind == "collide_b":
            add_dir(t, "etc")
            framing = b"".join(s + b"\0" for s in [b"etc/b", b"32768", b"420", b"0", b"0", b"", b""])
            add_file(t, "etc/a", b"hello" + framing + b"world")
        elif kind == "sparse_b":
            add_file(t, "f", b"hole:4096\0x")
        elif kind in ("deep", "deep_ok"):
            name = ""
            for _ in range(1100):
                name += "a/"
                add_dir(t, name)
            add_file(t, name + "f", b"deep\n")
            if kind == "deep":
                add_file(t, "/abs-evil", b"x\n")
        else:
            raise SystemExit("unknown kind " + kind)

    if kind == "gnu_longname":
        return tar_bytes(lambda t: add_file(t, "x" * 120 + "/" + UP + v + "/pwned", b"pwned\n"), tarfile.GNU_FORMAT)
    return tar_bytes(add)


def sparse_a():
    # A GNU sparse tar (old GNU format, type 'S'): 4096 bytes of hole, then "x".
    info = tarfile.TarInfo("f")
    info.mode, info.type = 0o644, tarfile.GNUTYPE_SPARSE
    info.size = 1  # stored bytes
    hdr = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    # sparse map at offset 386: 4 entries of (offset 12, numbytes 12); isextended 482; realsize 483.
    def octal(n, width):
        return ("%0*o" % (width - 1, n)).encode() + b"\0"
    hdr[386:398] = octal(4096, 12)
    hdr[398:410] = octal(1, 12)
    hdr[482] = 0
    hdr[483:495] = octal(4097, 12)
    hdr[148:156] = b"        "
    chk = sum(hdr[:512])
    hdr[148:156] = ("%06o" % chk).encode() + b"\0 "
    data = b"x" + b"\0" * 511
    return bytes(hdr[:512]) + data + b"\0" * 1024


def sha(b):
    return hashlib.sha256(b).hexdigest()


def docker_image(out, layers, extra=None, layer_names=None):
    """layers: list of (name, bytes or None); extra(t) adds special entries."""
    def add(t):
        names = []
        for name, data in layers:
            if data is not None:
                add_file(t, name, data)
            names.append(name)
        if extra:
            extra(t)
        add_file(t, "config.json", json.dumps({"architecture": "amd64", "os": "linux"}).encode())
        add_file(t, "manifest.json", json.dumps([{"Config": "config.json", "RepoTags": ["x:latest"],
                                                  "Layers": layer_names if layer_names is not None else names}]).encode())
        add_file(t, "repositories", b"{}")
    with open(out, "wb") as f:
        f.write(tar_bytes(add))


def oci_image(out, layer_descs, blobs, extra=None, index=None):
    config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
    blobs = dict(blobs)
    blobs[sha(config)] = config
    manifest = json.dumps({"schemaVersion": 2, "config": {"digest": "sha256:" + sha(config), "size": len(config)},
                           "layers": layer_descs}).encode()
    blobs[sha(manifest)] = manifest

    def add(t):
        add_file(t, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        if index is None:
            add_file(t, "index.json", json.dumps({"schemaVersion": 2, "manifests": [
                {"digest": "sha256:" + sha(manifest), "size": len(manifest),
                 "platform": {"os": "linux", "architecture": "amd64"}}]}).encode())
        for d, data in blobs.items():
            if data is not None:
                add_file(t, "blobs/sha256/" + d, data)
        if extra:
            extra(t)
    with open(out, "wb") as f:
        f.write(tar_bytes(add))


def image(kind, out, victim):
    host = secret_tar()
    hx = sha(host)
    if kind == "docker_symlink_layer":
        docker_image(out, [("layer.tar", None)], extra=lambda t: add_link(t, "layer.tar", victim))
    elif kind == "docker_symlink_tar":
        docker_image(out, [("l/host.tar", None)], extra=lambda t: add_link(t, "l", victim))
    elif kind == "docker_symlink_dir":
        docker_image(out, [("l/.", None)], extra=lambda t: add_link(t, "l", victim))
    elif kind == "docker_fifo_layer":
        docker_image(out, [("layer.tar", None)], extra=lambda t: add_special(t, "layer.tar", tarfile.FIFOTYPE))
    elif kind == "docker_device_layer":
        docker_image(out, [("layer.tar", None)], extra=lambda t: add_special(t, "layer.tar", tarfile.CHRTYPE, 1, 3))
    elif kind == "docker_bad_json":
        docker_image(out, [("layer.tar", host)], layer_names=[42])
    elif kind == "docker_benign":
        docker_image(out, [("layer.tar", host)])
    elif kind == "wh_lower_symlink":
        l1 = tar_bytes(lambda t: add_link(t, "esc", victim))

        def l2(t):
            add_file(t, "esc/.wh.secret", b"")
            add_file(t, "esc/.wh..wh..opq", b"")
        docker_image(out, [("l1/layer.tar", l1), ("l2/layer.tar", tar_bytes(l2))])
    elif kind == "wh_symlink":
        def l1(t):
            add_link(t, "esc", victim)
            add_file(t, "esc/.wh.secret", b"")
            add_file(t, "esc/.wh..wh..opq", b"")
        docker_image(out, [("l1/layer.tar", tar_bytes(l1))])
    elif kind in ("wh_empty", "wh_dotdot", "wh_whwh", "wh_dot"):
        bad = {"wh_empty": "dir/.wh.", "wh_dot": "dir/.wh..", "wh_whwh": ".wh..wh.x", "wh_dotdot": "dir/.wh..."}[kind]
        docker_image(out, [("l1/layer.tar", tar_bytes(lambda t: add_file(t, bad, b"")))])
    elif kind == "oci_digest_path":
        oci_image(out, [{"digest": "sha256:" + UP + victim.lstrip("/") + "/host.tar", "size": len(host)}], {})
    elif kind == "oci_blob_symlink":
        oci_image(out, [{"digest": "sha256:" + hx, "size": len(host)}], {hx: None},
                  extra=lambda t: add_link(t, "blobs/sha256/" + hx, victim + "/host.tar"))
    elif kind == "oci_blobs_dir_symlink":
        # The image's own blobs (config, manifest) are in VICTIM/blobs too:
        # the test copies them there (see `blobs` below).
        oci_image(out, [{"digest": "sha256:" + hx, "size": len(host)}], {hx: None},
                  extra=lambda t: add_link(t, "blobs", victim + "/blobs"))
        # Only the link and the index are kept: drop the blob entries.
        with tarfile.open(out) as t:
            members = [(m, t.extractfile(m).read() if m.isfile() else None) for m in t.getmembers()]
        keep_dir = os.path.join(victim, "blobs", "sha256")
        os.makedirs(keep_dir, exist_ok=True)

        def add(t):
            for m, data in members:
                if m.name.startswith("blobs/sha256/"):
                    with open(os.path.join(keep_dir, os.path.basename(m.name)), "wb") as f:
                        f.write(data)
                    continue
                t.addfile(m, io.BytesIO(data) if data is not None else None)
        with open(out, "wb") as f:
            f.write(tar_bytes(add))
    elif kind == "oci_fifo_index":
        oci_image(out, [{"digest": "sha256:" + hx, "size": len(host)}], {hx: host}, index=False,
                  extra=lambda t: add_special(t, "index.json", tarfile.FIFOTYPE))
    elif kind == "oci_benign":
        oci_image(out, [{"digest": "sha256:" + hx, "size": len(host)}], {hx: host})
    else:
        return False
    return True


def setup_victim(victim):
    os.makedirs(os.path.join(victim, "blobs", "sha256"), exist_ok=True)
    with open(os.path.join(victim, "secret"), "w") as f:
        f.write("host-secret\n")
    host = secret_tar()
    for p in (os.path.join(victim, "host.tar"), os.path.join(victim, "blobs", "sha256", sha(host))):
        with open(p, "wb") as f:
            f.write(host)


def make(kind, out, victim):
    setup_victim(victim)
    if image(kind, out, victim):
        return
    if kind == "sparse_a":
        data = sparse_a()
    elif kind == "bomb":
        data = gzip.compress(tar_bytes(lambda t: add_file(t, "zeros", b"\0" * (64 << 20))), 9)
    else:
        data = rootfs(kind, victim)
    with open(out, "wb") as f:
        f.write(data)


def naive(out_dir, archives):
    """What a trusting extractor does: paths joined as they are, links followed."""
    os.makedirs(out_dir, exist_ok=True)
    for archive in archives:
        with tarfile.open(archive) as t:
            for m in t.getmembers():
                path = os.path.join(out_dir, m.name)
                base = os.path.basename(m.name.rstrip("/"))
                parent = os.path.dirname(path)
                if base == ".wh..wh..opq":
                    os.setxattr(parent, "user.overlay.opaque", b"y")  # follows links
                    continue
                if base.startswith(".wh."):
                    victim = os.path.join(parent, base[4:])
                    if os.path.isdir(victim) and not os.path.islink(victim):
                        os.rmdir(victim)
                    elif os.path.lexists(victim):
                        os.unlink(victim)
                    continue
                os.makedirs(parent, exist_ok=True)
                if m.isdir():
                    if os.path.islink(path):
                        os.unlink(path)
                    os.makedirs(path, exist_ok=True)
                elif m.issym():
                    if os.path.isdir(path) and not os.path.islink(path):
                        os.rmdir(path)
                    elif os.path.lexists(path):
                        os.unlink(path)
                    os.symlink(m.linkname, path)
                elif m.islnk():
                    target = os.path.join(out_dir, m.linkname)
                    if os.path.lexists(path):
                        os.unlink(path)
                    os.link(target, path, follow_symlinks=True)
                    if m.size:
                        with open(path, "wb") as f:
                            f.write(t.extractfile(m).read())
                elif m.isreg():
                    with open(path, "wb") as f:  # follows a symlink at path
                        f.write(t.extractfile(m).read())
                elif m.ischr() or m.isblk():
                    os.mknod(path, (stat.S_IFCHR if m.ischr() else stat.S_IFBLK) | 0o600,
                             os.makedev(m.devmajor, m.devminor))
                elif m.isfifo():
                    os.mkfifo(path)
                if not m.issym():
                    try:
                        os.chown(path, m.uid, m.gid)
                        os.chmod(path, m.mode)
                    except OSError:
                        pass
                    for k, val in m.pax_headers.items():
                        if k.startswith("SCHILY.xattr."):
                            os.setxattr(path, k[13:], val.encode("utf-8", "surrogateescape"))
                        elif k.startswith("LIBARCHIVE.xattr."):
                            os.setxattr(path, k[17:], base64.b64decode(val))


def xattrs(d):
    for root, dirs, files in os.walk(d):
        for n in [root] + [os.path.join(root, x) for x in dirs + files]:
            for a in os.listxattr(n, follow_symlinks=False):
                print(os.path.relpath(n, d), a)


def owners(d):
    for root, dirs, files in os.walk(d):
        for n in [root] + [os.path.join(root, x) for x in dirs + files]:
            print(os.lstat(n).st_uid, os.lstat(n).st_gid, os.path.relpath(n, d))


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "make":
        for kind in sys.argv[4:]:
            make(kind, os.path.join(sys.argv[2], kind + ".tar"), sys.argv[3])
    elif cmd == "naive":
        naive(sys.argv[2], sys.argv[3:])
    elif cmd == "xattrs":
        xattrs(sys.argv[2])
    elif cmd == "owners":
        owners(sys.argv[2])
    else:
        raise SystemExit(__doc__)
