#!/usr/bin/env python3
"""Test-image helpers for Tests/images/build.sh (standard library only).

  ocitool.py verify OCI_DIR TAG         check every digest and size of the layout, and that TAG's
                                        layers hold what the tests expect (whiteouts, owners, links...)
  ocitool.py docker OCI_DIR TAG OUT     write TAG as a `docker save` archive (uncompressed layers)
  ocitool.py bad OCI_DIR TAG OUTDIR     write the broken layouts OUTDIR/bad-*/ (one defect each)
  ocitool.py opaque-layer OUT           write oci/'s layer 4 (an opaque /olddir) as a plain tar
  ocitool.py summary DIR                print what an OCI layout holds (for README.md and debugging)
"""
import gzip
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile

REF_NAME = "org.opencontainers.image.ref.name"
GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
TAR_LAYER = "application/vnd.oci.image.layer.v1.tar"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"


def die(msg):
    print(f"ocitool: error: {msg}", file=sys.stderr)
    sys.exit(1)


def sha256(data):
    return hashlib.sha256(data).hexdigest()


class Layout:
    def __init__(self, path):
        self.path = path
        with open(os.path.join(path, "index.json"), "rb") as f:
            self.index = json.load(f)

    def blob_path(self, digest):
        algo, hexdigest = digest.split(":", 1)
        return os.path.join(self.path, "blobs", algo, hexdigest)

    def blob(self, descriptor, check=True):
        with open(self.blob_path(descriptor["digest"]), "rb") as f:
            data = f.read()
        if check:
            if len(data) != descriptor["size"]:
                die(f"{descriptor['digest']}: {len(data)} bytes, descriptor says {descriptor['size']}")
            if "sha256:" + sha256(data) != descriptor["digest"]:
                die(f"{descriptor['digest']}: content does not match its digest")
        return data

    def manifest_descriptor(self, tag):
        found = [m for m in self.index["manifests"] if m.get("annotations", {}).get(REF_NAME) == tag]
        if len(found) != 1:
            die(f"{self.path}: {len(found)} manifests tagged {tag!r}")
        return found[0]

    def image(self, tag):
        """(manifest descriptor, manifest, config) of TAG, every digest checked."""
        desc = self.manifest_descriptor(tag)
        manifest = json.loads(self.blob(desc))
        config = json.loads(self.blob(manifest["config"]))
        return desc, manifest, config

    def put(self, data):
        """Stores a blob; returns its digest."""
        digest = "sha256:" + sha256(data)
        path = self.blob_path(digest)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        return digest


def uncompressed(descriptor, data):
    if descriptor["mediaType"].endswith("+gzip"):
        return gzip.decompress(data)
    if descriptor["mediaType"] in (TAR_LAYER, "application/vnd.docker.image.rootfs.diff.tar"):
        return data
    die(f"unexpected layer media type {descriptor['mediaType']}")


def members(tar_bytes):
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as t:
        return t.getmembers()


def canonical(name):
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/")


# ---------------------------------------------------------------------------------------- verify

def verify(path, tag):
    layout = Layout(path)
    for m in layout.index["manifests"]:
        t = m.get("annotations", {}).get(REF_NAME)
        _, manifest, config = layout.image(t)
        diff_ids = []
        for layer in manifest["layers"]:
            diff_ids.append("sha256:" + sha256(uncompressed(layer, layout.blob(layer))))
        if diff_ids != config["rootfs"]["diff_ids"]:
            die(f"{t}: diff_ids do not match the layers")
        if config.get("architecture") != "amd64" or config.get("os") != "linux":
            die(f"{t}: {config.get('os')}/{config.get('architecture')}")
    _, manifest, config = layout.image(tag)
    layers = [{canonical(m.name): m for m in members(uncompressed(d, layout.blob(d)))} for d in manifest["layers"]]
    if len(layers) != 4:
        die(f"{tag}: {len(layers)} layers, expected 4")
    base, files, whiteout, opaque = layers

    def expect(cond, what):
        if not cond:
            die(f"{tag}: {what}")

    expect("bin/busybox" in base and "usr/bin/probe" in base and base["bin/sh"].issym(), "layer 1 lacks busybox or probe")
    keep = files.get("data/keep")
    expect(keep is not None and (keep.isreg() or keep.islnk()) and keep.mode == 0o640 and (keep.uid, keep.gid) == (1000, 1000),
           f"data/keep: {keep and (oct(keep.mode), keep.uid, keep.gid)}")
    hard = files.get("data/hard")
    # Either name may come first; the second is the hard link to the first.
    expect(hard is not None and (hard.islnk() and canonical(hard.linkname) == "data/keep" or
                                 keep.islnk() and canonical(keep.linkname) == "data/hard"), "data/hard is not a hard link")
    expect(files["data/link"].issym() and files["data/link"].linkname == "keep", "data/link")
    expect(files["data/suid"].mode == 0o4755, f"data/suid mode {oct(files['data/suid'].mode)}")
    expect(files["data/sgid"].mode == 0o2775 and files["data/sticky"].mode == 0o1777, "sgid/sticky dirs")
    for dev in ("dev/testnull", "data/testnull"):
        expect(files[dev].ischr() and (files[dev].devmajor, files[dev].devminor) == (1, 3), f"{dev} is not c 1 3")
    expect(files["data/testblock"].isblk(), "data/testblock")
    expect(files["data/fifo"].isfifo(), "data/fifo")
    xattr = files["data/xattr"].pax_headers.get("SCHILY.xattr.user.swiftlet")
    expect(xattr == "hello", f"data/xattr: user.swiftlet={xattr!r} (pax headers {files['data/xattr'].pax_headers})")
    expect("data/ünïcödé.txt" in files, "UTF-8 name")
    expect(any(n.startswith("data/long/") and len(n) > 200 for n in files), "long name")
    expect("data/gone" in files and "olddir/a" in files and "olddir/sub/deep" in files, "data/gone or olddir/*")
    expect("data/.wh.gone" in whiteout and "data/new" in whiteout, f"layer 3: {sorted(whiteout)}")
    expect("olddir/.wh..wh..opq" in opaque and "olddir/c" in opaque, f"layer 4: {sorted(opaque)}")
    expect(config["config"].get("WorkingDir") == "/data", "WorkingDir")
    expect("GREETING=hello-from-image" in config["config"].get("Env", []), "Env")
    print(f"ocitool: {path}:{tag}: {len(layers)} layers verified: whiteout data/.wh.gone in layer 3, "
          f"opaque olddir/.wh..wh..opq in layer 4")


# ---------------------------------------------------------------------------------------- docker

def add_bytes(tar, name, data, mode=0o644):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = 1700000000
    tar.addfile(info, io.BytesIO(data))


def add_dir(tar, name):
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    info.mtime = 1700000000
    tar.addfile(info)


def docker(path, tag, out):
    """`docker save` (the pre-containerd format): manifest.json, <config hex>.json, <id>/layer.tar."""
    layout = Layout(path)
    _, manifest, config_obj = layout.image(tag)
    config = layout.blob(manifest["config"])
    config_name = manifest["config"]["digest"].split(":", 1)[1] + ".json"
    tmp = out + ".tmp"
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        layer_names, parent = [], None
        for i, desc in enumerate(manifest["layers"]):
            data = uncompressed(desc, layout.blob(desc))
            diff_id = sha256(data)
            if "sha256:" + diff_id != config_obj["rootfs"]["diff_ids"][i]:
                die("diff_id mismatch")
            # docker names a layer by a v1 id derived from its chain; any unique hex does.
            layer_id = sha256(((parent or "") + diff_id).encode())
            add_dir(tar, layer_id + "/")
            add_bytes(tar, layer_id + "/VERSION", b"1.0")
            v1 = {"id": layer_id, "created": "1970-01-01T00:00:00Z", "container_config": {}}
            if parent:
                v1["parent"] = parent
            add_bytes(tar, layer_id + "/json", json.dumps(v1).encode())
            add_bytes(tar, layer_id + "/layer.tar", data)
            layer_names.append(layer_id + "/layer.tar")
            parent = layer_id
        add_bytes(tar, config_name, config)
        add_bytes(tar, "manifest.json", json.dumps(
            [{"Config": config_name, "RepoTags": ["swiftlet-test:latest"], "Layers": layer_names}]).encode())
        add_bytes(tar, "repositories", json.dumps({"swiftlet-test": {"latest": parent}}).encode())
    os.replace(tmp, out)
    print(f"ocitool: {out}: docker save archive, {len(layer_names)} layers, config {config_name}")


# ---------------------------------------------------------------------------------------- bad

def copy_single(layout, tag, dest):
    """A copy of the layout with TAG only (tagged `test`) and just the blobs it needs."""
    desc, manifest, _ = layout.image(tag)
    if os.path.exists(dest):
        shutil.rmtree(dest)
    os.makedirs(os.path.join(dest, "blobs", "sha256"))
    shutil.copyfile(os.path.join(layout.path, "oci-layout"), os.path.join(dest, "oci-layout"))
    for d in [desc, manifest["config"]] + manifest["layers"]:
        shutil.copyfile(layout.blob_path(d["digest"]), os.path.join(dest, "blobs", "sha256", d["digest"].split(":", 1)[1]))
    entry = dict(desc)
    entry["annotations"] = {REF_NAME: "test"}
    index = {"schemaVersion": 2, "manifests": [entry]}
    write_json(os.path.join(dest, "index.json"), index)
    return Layout(dest)


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f)


def rewrite(layout, manifest, config):
    """Stores CONFIG and MANIFEST as new blobs and points index.json at them (the old blobs stay)."""
    config_bytes = json.dumps(config).encode()
    manifest = dict(manifest)
    manifest["config"] = {"mediaType": CONFIG, "digest": layout.put(config_bytes), "size": len(config_bytes)}
    manifest_bytes = json.dumps(manifest).encode()
    old = layout.index["manifests"][0]
    os.unlink(layout.blob_path(old["digest"]))
    entry = dict(old)
    entry.update({"mediaType": MANIFEST, "digest": layout.put(manifest_bytes), "size": len(manifest_bytes)})
    layout.index["manifests"] = [entry]
    write_json(os.path.join(layout.path, "index.json"), layout.index)


def tar_of(entries):
    """An uncompressed tar of (TarInfo, bytes or None) written as given: names are not cleaned."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def entry(name, kind="file", data=b"", linkname="", mode=0o644):
    info = tarfile.TarInfo(name)
    # TarInfo keeps a name as set (`/abs` stays absolute, `../x` stays): TarFile.add would clean it.
    info.name = name
    info.mtime = 1700000000
    info.mode = mode
    if kind == "file":
        info.size = len(data)
        return info, data
    info.type = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE}[kind]
    info.linkname = linkname
    if kind == "dir":
        info.mode = 0o755
    return info, None


def append_layer(layout, entries, check_names):
    """Appends a gzip layer of ENTRIES (digests, diff_id and history consistent)."""
    _, manifest, config = layout.image("test")
    raw = tar_of(entries)
    names = [m.name for m in members(raw)]
    for n in check_names:
        if n not in names:
            die(f"the bad layer lost its entry {n!r}: {names}")
    blob = gzip.compress(raw, mtime=0)
    manifest = dict(manifest)
    manifest["layers"] = manifest["layers"] + [{"mediaType": GZIP_LAYER, "digest": layout.put(blob), "size": len(blob)}]
    config["rootfs"]["diff_ids"].append("sha256:" + sha256(raw))
    config.setdefault("history", []).append({"created": "2023-11-14T22:13:20Z", "created_by": "a bad layer"})
    rewrite(layout, manifest, config)


def bad(path, tag, outdir):
    layout = Layout(path)
    made = []

    def fresh(name):
        made.append(name)
        return copy_single(layout, tag, os.path.join(outdir, name))

    # A layer blob whose bytes differ from its digest. Only the gzip header's MTIME changes: the
    # blob is still valid gzip of the very same tar (same size, same diff_id), so only a check of
    # the blob's own digest catches it.
    img = fresh("bad-digest")
    _, manifest, _ = img.image("test")
    victim = img.blob_path(manifest["layers"][1]["digest"])
    with open(victim, "rb") as f:
        data = bytearray(f.read())
    if data[:3] != b"\x1f\x8b\x08":
        die("layer 2 is not gzip")
    data[4:8] = b"\x78\x56\x34\x12" if bytes(data[4:8]) != b"\x78\x56\x34\x12" else b"\x21\x43\x65\x07"
    assert gzip.decompress(bytes(data)) == gzip.decompress(img.blob(manifest["layers"][1]))
    with open(victim, "wb") as f:
        f.write(data)

    # The config blob changed (same length), its descriptor not.
    img = fresh("bad-config-digest")
    _, manifest, _ = img.image("test")
    victim = img.blob_path(manifest["config"]["digest"])
    with open(victim, "rb") as f:
        data = f.read()
    changed = data.replace(b"hello-from-image", b"hello-from-IMAGE")
    if changed == data:
        die("config has no GREETING to change")
    with open(victim, "wb") as f:
        f.write(changed)

    # Tar entries that leave the root: ../, absolute names, a symlink then a write through it
    # (in one layer, or the symlink in one layer and the write in the next), a hard link to ../.
    dotdot = "../" * 16 + "tmp/swiftlet-escape-dotdot"
    img = fresh("bad-dotdot")
    append_layer(img, [entry("ok-before", data=b"ok\n"), entry(dotdot, data=b"escaped\n"), entry("ok-after", data=b"ok\n")],
                 [dotdot])

    img = fresh("bad-absolute")
    append_layer(img, [entry("ok-before", data=b"ok\n"), entry("/tmp/swiftlet-escape-abs", data=b"escaped\n")],
                 ["/tmp/swiftlet-escape-abs"])

    img = fresh("bad-symlink")
    append_layer(img, [entry("evil", "symlink", linkname="/tmp", mode=0o777),
                       entry("evil/swiftlet-escape", data=b"escaped\n")], ["evil", "evil/swiftlet-escape"])

    img = fresh("bad-symlink-relative")
    append_layer(img, [entry("evil", "symlink", linkname="../" * 16 + "tmp", mode=0o777),
                       entry("evil/swiftlet-escape-rel", data=b"escaped\n")], ["evil", "evil/swiftlet-escape-rel"])

    img = fresh("bad-symlink-layers")
    append_layer(img, [entry("evil", "symlink", linkname="/tmp", mode=0o777)], ["evil"])
    append_layer(img, [entry("evil/swiftlet-escape-layers", data=b"escaped\n")], ["evil/swiftlet-escape-layers"])

    img = fresh("bad-hardlink")
    target = "../" * 16 + "etc/hostname"
    append_layer(img, [entry("stolen", "hardlink", linkname=target)], ["stolen"])

    # A layer blob cut short; its descriptor still has the full size and digest.
    img = fresh("bad-truncated")
    _, manifest, _ = img.image("test")
    victim = img.blob_path(manifest["layers"][1]["digest"])
    size = os.path.getsize(victim)
    os.truncate(victim, size // 2)

    # index.json names a manifest that is not there.
    img = fresh("bad-no-manifest")
    os.unlink(img.blob_path(img.index["manifests"][0]["digest"]))

    # An arm64 image: consistent digests, the wrong architecture.
    img = fresh("bad-arch")
    _, manifest, config = img.image("test")
    config["architecture"] = "arm64"
    rewrite(img, manifest, config)
    entry0 = img.index["manifests"][0]
    if "platform" in entry0:
        entry0["platform"]["architecture"] = "arm64"
        write_json(os.path.join(img.path, "index.json"), img.index)

    for name in made:
        print(f"ocitool: {os.path.join(outdir, name)}")


def opaque_layer(out):
    """Layer 4 of oci/: /olddir replaced (umoci's entry order: the opaque marker first)."""
    raw = tar_of([entry("olddir/.wh..wh..opq", data=b"", mode=0),
                  entry("olddir/", "dir"),
                  entry("olddir/c", data=b"c\n")])
    with open(out, "wb") as f:
        f.write(raw)


def summary(path):
    layout = Layout(path)
    for m in layout.index["manifests"]:
        t = m.get("annotations", {}).get(REF_NAME)
        _, manifest, config = layout.image(t)
        c = config.get("config", {})
        print(f"{t}: manifest {m['digest'][:19]} {config.get('architecture')} User={c.get('User')!r} "
              f"WorkingDir={c.get('WorkingDir')!r} Env={c.get('Env')} Entrypoint={c.get('Entrypoint')} Cmd={c.get('Cmd')}")
        for i, d in enumerate(manifest["layers"]):
            ms = members(uncompressed(d, layout.blob(d)))
            print(f"  layer {i + 1}: {d['size']} bytes, {len(ms)} entries: "
                  + " ".join(canonical(x.name) for x in ms[:12]) + (" ..." if len(ms) > 12 else ""))


def main(argv):
    if len(argv) == 3 and argv[0] == "verify":
        verify(argv[1], argv[2])
    elif len(argv) == 4 and argv[0] == "docker":
        docker(argv[1], argv[2], argv[3])
    elif len(argv) == 4 and argv[0] == "bad":
        bad(argv[1], argv[2], argv[3])
    elif len(argv) == 2 and argv[0] == "opaque-layer":
        opaque_layer(argv[1])
    elif len(argv) == 2 and argv[0] == "summary":
        summary(argv[1])
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv[1:])
