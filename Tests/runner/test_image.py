"""Functions whose image is converted at deploy: a rootfs tarball built here.

The tarball (gzip) holds busybox-static's /bin/busybox with a few applet links,
/etc/passwd and /etc/group (root and `worker`, 1234:1234, home /home/worker) and
/etc/marker. Deploying it runs `swiftlet image prepare` under the daemon; its
jobs restore a snapshot made with `snapshot create --image` and run with
`run --image`. Every function here has the same image content, memory and
vCPUs, so they share one snapshot: one cold boot for the module.
"""

import gzip
import io
import os
import re
import shutil
import tarfile

import pytest

from conftest import assert_error

MARKER = "from-the-test-tarball"
PASSWD = "root:x:0:0:root:/root:/bin/sh\nworker:x:1234:1234:worker:/home/worker:/bin/sh\n"
GROUP = "root:x:0:\nworker:x:1234:\n"
APPLETS = ["sh", "echo", "cat", "id", "printf"]


def _busybox():
    for p in ("/bin/busybox", "/usr/bin/busybox"):
        if os.path.exists(p):
            with open(p, "rb") as f:
                return f.read()
    pytest.fail("busybox-static is not installed (/bin/busybox): `make deps` installs it")


def build_rootfs_tarball(path):
    """A gzip rootfs tarball, its entries' times and owners fixed (the same bytes on every run)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add(name, kind=tarfile.REGTYPE, data=b"", mode=0o644, uid=0, gid=0, link=""):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.uid, info.gid, info.mtime, info.linkname = kind, mode, uid, gid, 1700000000, link
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
        for d, mode in (("bin", 0o755), ("etc", 0o755), ("root", 0o700), ("tmp", 0o1777), ("home", 0o755)):
            add(d, tarfile.DIRTYPE, mode=mode)
        add("home/worker", tarfile.DIRTYPE, mode=0o755, uid=1234, gid=1234)
        add("bin/busybox", data=_busybox(), mode=0o755)
        for applet in APPLETS:
            add(f"bin/{applet}", tarfile.SYMTYPE, link="busybox", mode=0o777)
        add("etc/passwd", data=PASSWD.encode())
        add("etc/group", data=GROUP.encode())
        add("etc/marker", data=(MARKER + "\n").encode())
    with open(path, "wb") as f:
        f.write(gzip.compress(buf.getvalue(), mtime=0))


@pytest.fixture(scope="module")
def tarball(tmp_path_factory):
    path = tmp_path_factory.mktemp("image") / "rootfs.tar.gz"
    build_rootfs_tarball(path)
    return str(path)


HANDLER = ["sh", "-c", 'echo "greeting=$GREETING"; echo "payload=$(cat)"; echo "uid=$(id -u) home=$HOME"; cat /etc/marker']


def run(daemon, name, payload):
    job = daemon.wait_job(daemon.submit(name, payload)["id"])
    out = daemon.get(f"/v1/jobs/{job['id']}/output").text
    log = daemon.get(f"/v1/jobs/{job['id']}/log").text
    assert job["state"] == "succeeded", f"{name}: {job}\noutput: {out!r}\nlog: {log[-2000:]!r}\n{daemon.log_tail()}"
    return out


@pytest.fixture(scope="module")
def image_fn(daemon, tarball):
    """`tar:TARBALL` with an env var: deployed (the conversion) and run once (the module's one cold boot)."""
    name = "image-tar"
    f = daemon.put_function(name, {"command": HANDLER, "image": "tar:" + tarball, "env": {"GREETING": "hello"}})
    assert f["image"] == "tar:" + tarball and f["user"] is None, f
    assert re.fullmatch(r"[0-9a-f]{64}", f["imageSha256"]), f
    out = run(daemon, name, b"first")
    return name, f, out


def test_converted_image_runs_the_handler(daemon, image_fn):
    name, f, first = image_fn
    assert first == f"greeting=hello\npayload=first\nuid=0 home=/root\n{MARKER}\n", first
    # A second call restores the snapshot the first one made.
    snapshots_before = daemon.metric("swiftlet_snapshots_created_total")
    assert run(daemon, name, b"second") == f"greeting=hello\npayload=second\nuid=0 home=/root\n{MARKER}\n"
    assert daemon.metric("swiftlet_snapshots_created_total") == snapshots_before
    # The same body again: the conversion is cached, the version unchanged.
    r = daemon.put(f"/v1/functions/{name}", json={"command": HANDLER, "image": f["image"], "env": {"GREETING": "hello"}})
    assert r.status_code == 200 and r.json()["version"] == f["version"], r.text


def test_user_of_the_image(daemon, image_fn, tarball):
    """`user` runs the handler as the image's `worker` (uid and HOME from its /etc/passwd); same snapshot."""
    name = "image-user"
    before = daemon.metric("swiftlet_snapshots_created_total")
    f = daemon.put_function(name, {"command": HANDLER, "image": "tar:" + tarball, "user": "worker", "env": {"GREETING": "w"}})
    assert f["user"] == "worker" and f["imageSha256"] == image_fn[1]["imageSha256"], f
    assert run(daemon, name, b"as-worker") == f"greeting=w\npayload=as-worker\nuid=1234 home=/home/worker\n{MARKER}\n"
    assert daemon.metric("swiftlet_snapshots_created_total") == before, "a function of the same image made another snapshot"


def test_plain_path_is_detected(daemon, image_fn, tarball):
    """The tarball's path without a prefix: not ext4, so converted (to the same ext4, the same snapshot)."""
    name = "image-plain"
    f = daemon.put_function(name, {"command": HANDLER, "image": tarball})
    assert f["image"] == tarball and f["imageSha256"] == image_fn[1]["imageSha256"], f
    assert run(daemon, name, b"plain") == f"greeting=\npayload=plain\nuid=0 home=/root\n{MARKER}\n"


def test_failed_conversion_is_400(daemon, tmp_path):
    bad = tmp_path / "not-a.tar"
    bad.write_bytes(b"this is not a tar archive\n" * 40)
    for image in ("tar:" + str(bad), str(bad)):
        r = daemon.put("/v1/functions/image-bad", json={"command": ["true"], "image": image})
        err = assert_error(r, 400)
        assert str(bad) in err["message"] and "swiftlet: error" not in err["message"] and "\n" not in err["message"], err
    assert_error(daemon.get("/v1/functions/image-bad"), 404)


def test_user_needs_an_image_run_through_the_agent_initramfs(daemon, tmp_path):
    """`user` with a plain path to an ext4 image (booted as it is: no --user) is a 400,
    found by the superblock's magic; the message says to give it as ext4:PATH."""
    ext4 = tmp_path / "looks.ext4"
    data = bytearray(4096)
    data[1080:1082] = b"\x53\xef"
    ext4.write_bytes(bytes(data))
    r = daemon.put("/v1/functions/image-user-ext4", json={"command": ["true"], "image": str(ext4), "user": "root"})
    err = assert_error(r, 400)
    assert "'user'" in err["message"] and f"ext4:{ext4}" in err["message"], err
    # `ext4:` with a file that is not ext4.
    r = daemon.put("/v1/functions/image-user-ext4", json={"command": ["true"], "image": "ext4:" + str(tmp_path)})
    assert_error(r, 400)
    assert_error(daemon.get("/v1/functions/image-user-ext4"), 404)
