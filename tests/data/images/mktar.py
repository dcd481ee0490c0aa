#!/usr/bin/python3
"""Archives for the image tests, hostile ones included.

  mktar.py hostile KIND OUT [VICTIM]   one crafted tar (KIND below) at OUT
  mktar.py naive ARCHIVE DIR           extracts ARCHIVE into DIR trusting
                                       everything (the negative control: what
                                       a careless extractor would do)
Kinds: traversal ("../evil"), absolute ("/abs-evil"), device (a char device
at etc/evil-null), devdir (dev/null as a char device, and etc/ok), symlink
(esc -> VICTIM, then esc/pwned through it), hardlink (hl -> ../../VICTIM's
file), bigid (a file owned by uid 70000), garbage (not an archive).
"""
import io
import sys
import tarfile


def add_file(t, name, data=b"x\n", uid=0, gid=0, mode=0o644):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.uid, info.gid, info.mode = uid, gid, mode
    t.addfile(info, io.BytesIO(data))


def hostile(kind, out, victim="/tmp/ultari-victim"):
    if kind == "garbage":
        with open(out, "wb") as f:
            f.write(b"this is not an archive\n" * 100)
        return
    with tarfile.open(out, "w", format=tarfile.GNU_FORMAT) as t:
        add_file(t, "etc/ok")
        if kind == "traversal":
            add_file(t, "../evil")
        elif kind == "absolute":
            add_file(t, "/abs-evil")
        elif kind in ("device", "devdir"):
            info = tarfile.TarInfo("etc/evil-null" if kind == "device" else "dev/null")
            info.type = tarfile.CHRTYPE
            info.devmajor, info.devminor = 1, 3
            t.addfile(info)
        elif kind == "symlink":
            info = tarfile.TarInfo("esc")
            info.type = tarfile.SYMTYPE
            info.linkname = victim
            t.addfile(info)
            add_file(t, "esc/pwned", b"pwned\n")
        elif kind == "hardlink":
            info = tarfile.TarInfo("hl")
            info.type = tarfile.LNKTYPE
            info.linkname = "../../" + victim.lstrip("/") + "/target"
            t.addfile(info)
        elif kind == "bigid":
            add_file(t, "etc/big", uid=70000, gid=70000)
        else:
            raise SystemExit("unknown kind " + kind)


def naive(archive, directory):
    with tarfile.open(archive) as t:
        try:
            t.extractall(directory, filter="fully_trusted")
        except TypeError:  # before Python 3.11.4: no filters, everything trusted
            t.extractall(directory)


if __name__ == "__main__":
    if sys.argv[1] == "hostile":
        hostile(*sys.argv[2:])
    elif sys.argv[1] == "naive":
        naive(*sys.argv[2:4])
    else:
        raise SystemExit(__doc__)
