"""OCI image tarballs for cluster_suite.py, built without a registry or an image builder (as
hack/images.sh does, in Python: the GPU machine has no Go): one layer, an OCI layout packed into
a tarball that containerd imports.

  docker.io/kybernate/kybernate-agent:dev      the multi-call binary as /kybernate-agent + glibc
  docker.io/kybernate/kybernate-scheduler:dev  the multi-call binary as /kybernate-scheduler + glibc
  docker.io/kybernate/pause:dev                test/images/pause
  docker.io/kybernate/host-python:dev          an empty root for the PyTorch pods: folders, the
                                               host's top-level links (/lib -> usr/lib), a few
                                               /etc files; the pods mount the host's /usr/lib,
                                               /usr/bin, /opt, ... read-only (hostPath)
"""
import hashlib
import io
import json
import os
import subprocess
import tarfile
import tempfile


def _add_file(tar, name, src, mode=0o755):
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime = os.path.getsize(src), mode, 0
    with open(src, "rb") as f:
        tar.addfile(ti, f)


def _add_dir(tar, name, mode=0o755):
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, mode, 0
    tar.addfile(ti)


def _add_link(tar, name, target):
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname, ti.mtime = tarfile.SYMTYPE, target, 0
    tar.addfile(ti)


def _libs(binary):
    """The shared libraries BINARY loads (and the loader), by ldd."""
    p = subprocess.run(["ldd", binary], capture_output=True, text=True)
    if "not a dynamic executable" in p.stdout + p.stderr:
        return []
    out = []
    for line in p.stdout.splitlines():
        for tok in line.split():
            if tok.startswith("/") and os.path.exists(tok):
                out.append(tok)
    return sorted(set(out))


def _blob(layout, data):
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(layout, "blobs", "sha256", digest), "wb") as f:
        f.write(data)
    return "sha256:" + digest, len(data)


def build(out_tar, ref, fill, entrypoint):
    """Writes OUT_TAR, an OCI layout of REF whose one layer FILL(tar) fills."""
    with tempfile.TemporaryDirectory(dir=os.path.dirname(out_tar)) as layout:
        os.makedirs(os.path.join(layout, "blobs", "sha256"))
        layer = os.path.join(layout, "layer.tar")
        with tarfile.open(layer, "w", format=tarfile.GNU_FORMAT) as t:
            fill(t)
        h = hashlib.sha256()
        with open(layer, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        ldigest, lsize = "sha256:" + h.hexdigest(), os.path.getsize(layer)
        os.rename(layer, os.path.join(layout, "blobs", "sha256", h.hexdigest()))
        config = {"architecture": "amd64", "os": "linux",
                  "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                             "Entrypoint": entrypoint, "WorkingDir": "/"},
                  "rootfs": {"type": "layers", "diff_ids": [ldigest]},
                  "history": [{"created_by": "test/gpu/cluster_images.py"}]}
        cdigest, csize = _blob(layout, json.dumps(config).encode())
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cdigest, "size": csize},
                    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ldigest, "size": lsize}]}
        mdigest, msize = _blob(layout, json.dumps(manifest).encode())
        index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                 "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": mdigest, "size": msize,
                                "annotations": {"io.containerd.image.name": ref,
                                                "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[1]}}]}
        with open(os.path.join(layout, "index.json"), "w") as f:
            json.dump(index, f)
        with open(os.path.join(layout, "oci-layout"), "w") as f:
            f.write('{"imageLayoutVersion":"1.0.0"}')
        with tarfile.open(out_tar, "w") as t:
            for n in ("oci-layout", "index.json", "blobs"):
                t.add(os.path.join(layout, n), arcname=n)
    return out_tar


def driver_deps(libdir):
    """The libraries outside LIBDIR that the driver's libcuda.so.1 and libnvidia-ml.so.1 load
    (libm, libdl, librt, libpthread of glibc): the agent image must hold them, since the driver's
    folder mounted into it holds only the driver's own libraries."""
    deps = set()
    for lib in ("libcuda.so.1", "libnvidia-ml.so.1"):
        path = os.path.join(libdir, lib)
        if os.path.exists(path):
            deps.update(l for l in _libs(path) if os.path.dirname(os.path.realpath(l)) != os.path.realpath(libdir))
    return sorted(deps)


def go_image(out_dir, name, binary, extra_libs=()):
    """kybernate-agent or kybernate-scheduler: BINARY as /NAME with the libraries it links, and
    EXTRA_LIBS at their host paths."""
    def fill(t):
        _add_file(t, name, binary)
        for d in ("tmp", "run", "run/kybernate"):
            _add_dir(t, d, 0o1777 if d == "tmp" else 0o755)
        dirs = set()
        for lib in sorted(set(_libs(binary)) | set(extra_libs)):
            parts = os.path.dirname(lib).strip("/").split("/")
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    _add_dir(t, d)
            _add_file(t, lib.lstrip("/"), os.path.realpath(lib))
    return build(os.path.join(out_dir, name + ".tar"), f"docker.io/kybernate/{name}:dev", fill, [f"/{name}"])


def pause_image(out_dir, binary):
    return build(os.path.join(out_dir, "pause.tar"), "docker.io/kybernate/pause:dev",
                 lambda t: _add_file(t, "pause", binary), ["/pause"])


def host_python_image(out_dir):
    """An empty root for pods that mount the host's Python tree (see host_mounts)."""
    def fill(t):
        for d in ("proc", "sys", "dev", "etc", "usr", "usr/local", "results", "root", "work", "run"):
            _add_dir(t, d)
        _add_dir(t, "tmp", 0o1777)
        for top in ("lib", "lib64", "bin", "sbin", "lib32", "libx32"):
            if os.path.islink("/" + top):
                _add_link(t, top, os.readlink("/" + top))
        for f in ("passwd", "group", "hosts", "nsswitch.conf", "ld.so.cache", "ld.so.conf"):
            if os.path.isfile("/etc/" + f):
                _add_file(t, "etc/" + f, "/etc/" + f, 0o644)
        if os.path.isdir("/etc/ld.so.conf.d"):
            _add_dir(t, "etc/ld.so.conf.d")
            for f in sorted(os.listdir("/etc/ld.so.conf.d")):
                src = os.path.join("/etc/ld.so.conf.d", f)
                if os.path.isfile(src):
                    _add_file(t, "etc/ld.so.conf.d/" + f, src, 0o644)
    return build(os.path.join(out_dir, "host-python.tar"), "docker.io/kybernate/host-python:dev", fill, ["/bin/sh"])


def host_mounts(python, torch=True):
    """The host folders a PyTorch pod mounts read-only: /usr/lib, /usr/bin, ... and PYTHON's
    prefixes where they lie elsewhere (a venv under /opt, say); top-level folders that are not
    links to /usr."""
    imp = "import torch; t = os.path.dirname(torch.__file__)" if torch else "t = sys.prefix"
    p = subprocess.run([python, "-c", f"import sys, os; {imp}; print(sys.executable); print(os.path.realpath(sys.executable)); "
                        "print(sys.prefix); print(sys.base_prefix); print(t)"],
                       capture_output=True, text=True, timeout=180)
    if p.returncode != 0:
        raise RuntimeError(f"{python} cannot import torch: {p.stderr[-800:]}")
    exe, real_exe, prefix, base, torchdir = p.stdout.strip().splitlines()[-5:]
    binds = [top for top in ("/lib", "/lib64", "/bin", "/sbin", "/lib32", "/libx32")
             if os.path.isdir(top) and not os.path.islink(top)]
    binds += [d for d in ("/usr/lib", "/usr/lib64", "/usr/lib32", "/usr/bin", "/usr/sbin", "/usr/share",
                          "/usr/local/lib", "/usr/local/bin", "/opt") if os.path.isdir(d) and not os.path.islink(d)]
    for d in (prefix, base, os.path.dirname(os.path.dirname(real_exe)), os.path.dirname(os.path.dirname(torchdir))):
        d = os.path.realpath(d)
        if d in ("/", "/usr", "/usr/local") or any(d == b or d.startswith(b + "/") for b in binds):
            continue
        binds.append(d)
    # The pods start EXE itself (a venv's bin/python3, not what it links to: the venv's
    # site-packages come with it).
    return binds, {"python": exe, "realpath": real_exe, "prefix": prefix, "torch": torchdir}
