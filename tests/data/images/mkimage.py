#!/usr/bin/python3
"""Image archives the way `docker save`, `podman save` and OCI layouts lay them out.

  mkimage.py FORMAT OUT BASE [BAD]
FORMAT: docker (a docker-archive tar), oci (an OCI layout tar), oci-dir (an
OCI layout directory). Three layers:
  1. BASE (a directory: the root)
  2. removes etc/greeting (whiteout .wh.greeting), adds etc/added and
     opt/data/{a,b}
  3. makes opt/data opaque (.wh..wh..opq) and adds opt/data/c
BAD (tests of refusal): digest (a layer blob that does not match its digest),
escape (a manifest naming ../outside as a layer), hostlink (docker: a layer
that is a symlink to a host file, /tmp/ultari-hostlink.tar). Variant innerlink
(docker): the third layer is a symlink to the first's tar, as docker save
links a layer two images share (fine: it stays inside).
"""
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile


# What a run of the image starts with (OCI image config): the command shows it.
# "boot" and "hostname" are Ultari's run defaults, which an archive must not
# be able to set (the boot step runs as root before every command).
RUN_CONFIG = {"Env": ["PATH=/bin", "GREETING=hello"], "WorkingDir": "/opt",
              "Entrypoint": ["/bin/sh", "-c"], "Cmd": ["echo $GREETING from $(pwd) as $(id -u):$(id -g)"],
              "User": "1000:1000", "boot": ["/bin/sh", "-c", "touch /booted"], "hostname": "evil"}


def tar_bytes(add):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        add(t)
    return buf.getvalue()


def file_entry(t, name, data=b"", mode=0o644):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    t.addfile(info, io.BytesIO(data))


def dir_entry(t, name):
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    t.addfile(info)


def layers(base):
    l1 = tar_bytes(lambda t: t.add(base, arcname="."))

    def l2(t):
        dir_entry(t, "etc")
        file_entry(t, "etc/.wh.greeting")
        file_entry(t, "etc/added", b"added\n")
        dir_entry(t, "opt")
        dir_entry(t, "opt/data")
        file_entry(t, "opt/data/a", b"a\n")
        file_entry(t, "opt/data/b", b"b\n")

    def l3(t):
        dir_entry(t, "opt/data")
        file_entry(t, "opt/data/.wh..wh..opq")
        file_entry(t, "opt/data/c", b"c\n")

    return [l1, tar_bytes(l2), tar_bytes(l3)]


def sha(b):
    return hashlib.sha256(b).hexdigest()


def docker(out, base, bad):
    files = {}
    names = []
    for i, l in enumerate(layers(base)):
        name = "layer%d/layer.tar" % i
        files[name] = l
        names.append(name)
    if bad == "escape":
        names[1] = "../outside/layer.tar"
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": RUN_CONFIG,
                         "rootfs": {"type": "layers", "diff_ids": ["sha256:" + sha(files[n]) for n in files]}}).encode()
    files["config.json"] = config
    files["manifest.json"] = json.dumps([{"Config": "config.json", "RepoTags": ["localhost/test:latest"],
                                          "Layers": names}]).encode()
    files["repositories"] = json.dumps({"localhost/test": {"latest": "layer2"}}).encode()
    links = {}
    if bad == "hostlink":
        links["layer1/layer.tar"] = "/tmp/ultari-hostlink.tar"
    if bad == "innerlink":
        links["layer2/layer.tar"] = "../layer0/layer.tar"

    def add(t):
        for n, d in files.items():
            if n in links:
                info = tarfile.TarInfo(n)
                info.type = tarfile.SYMTYPE
                info.linkname = links[n]
                t.addfile(info)
            else:
                file_entry(t, n, d)
    with open(out, "wb") as f:
        f.write(tar_bytes(add))


def oci(out, base, bad, as_dir):
    blobs = {}

    def blob(data, media):
        d = sha(data)
        blobs[d] = data
        return {"mediaType": media, "digest": "sha256:" + d, "size": len(data)}

    descs = []
    for l in layers(base):
        descs.append(blob(gzip.compress(l, mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip"))
    config = blob(json.dumps({"architecture": "amd64", "os": "linux", "config": RUN_CONFIG}).encode(),
                  "application/vnd.oci.image.config.v1+json")
    manifest = blob(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                                "config": config, "layers": descs}).encode(),
                    "application/vnd.oci.image.manifest.v1+json")
    manifest["platform"] = {"os": "linux", "architecture": "amd64"}
    if bad == "digest":
        d = descs[1]["digest"][7:]
        blobs[d] = blobs[d][:-1] + bytes([blobs[d][-1] ^ 1])
    files = {"oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
             "index.json": json.dumps({"schemaVersion": 2, "manifests": [manifest]}).encode()}
    for d, data in blobs.items():
        files["blobs/sha256/" + d] = data
    if as_dir:
        for n, data in files.items():
            os.makedirs(os.path.dirname(os.path.join(out, n)) or out, exist_ok=True)
            with open(os.path.join(out, n), "wb") as f:
                f.write(data)
    else:
        with open(out, "wb") as f:
            f.write(tar_bytes(lambda t: [file_entry(t, n, d) for n, d in files.items()]))


if __name__ == "__main__":
    fmt, out, base = sys.argv[1:4]
    bad = sys.argv[4] if len(sys.argv) > 4 else ""
    if fmt == "docker":
        docker(out, base, bad)
    elif fmt in ("oci", "oci-dir"):
        oci(out, base, bad, fmt == "oci-dir")
    else:
        raise SystemExit(__doc__)
