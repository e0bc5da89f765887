"""`flowkd data fetch` against a loopback HTTP server serving small archives in the official layouts."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import pickle
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from flowkd.cli import main
from flowkd.config import config_from_dict
from flowkd.data import fetch as F
from flowkd.runmodels import load_data
from flowkd.data.readers import load_dataset
from flowkd.errors import FlowKDError

CIFAR10_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]


# ------------------------------------------------------------------------------------------ archives


def _tar(members: dict[str, bytes], extra=None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in sorted({n.split("/")[0] for n in members}):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return buf.getvalue()


def cifar10_files(per_batch=4, seed=0):
    """The python release's layout: dicts pickled by Python 2 (bytes keys when read with encoding='bytes')."""
    rng = np.random.default_rng(seed)
    files, images, labels = {}, {}, {}
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, per_batch)]
        images[name], labels[name] = x, y
        d = {b"batch_label": f"{name} of 5".encode(), b"labels": y, b"data": x,
             b"filenames": [f"img_{i}.png".encode() for i in range(per_batch)]}
        files[f"cifar-10-batches-py/{name}"] = pickle.dumps(d, protocol=2)
    files["cifar-10-batches-py/batches.meta"] = pickle.dumps(
        {b"num_cases_per_batch": per_batch, b"label_names": CIFAR10_NAMES, b"num_vis": 3072}, protocol=2)
    files["cifar-10-batches-py/readme.html"] = b"<html></html>"
    return files, images, labels


def cifar100_files(n=6, seed=1):
    rng = np.random.default_rng(seed)
    files = {}
    for split in ("train", "test"):
        d = {b"filenames": [b"a.png"] * n, b"batch_label": b"x", b"fine_labels": list(range(n)),
             b"coarse_labels": [0] * n, b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}
        files[f"cifar-100-python/{split}"] = pickle.dumps(d, protocol=2)
    files["cifar-100-python/meta"] = pickle.dumps(
        {b"fine_label_names": [f"c{i}".encode() for i in range(100)], b"coarse_label_names": [b"s"] * 20}, protocol=2)
    return files


def stl10_files(n=3, seed=2):
    rng = np.random.default_rng(seed)
    files = {"stl10_binary/class_names.txt": "\n".join(f"k{i}" for i in range(10)).encode() + b"\n",
             "stl10_binary/fold_indices.txt": b"0 1\n"}
    for split in ("train", "test"):
        files[f"stl10_binary/{split}_X.bin"] = rng.integers(0, 256, n * 3 * 96 * 96, dtype=np.uint8).tobytes()
        files[f"stl10_binary/{split}_y.bin"] = np.arange(1, n + 1, dtype=np.uint8).tobytes()
    return files


# ------------------------------------------------------------------------------------------- server


class Server:
    """http.server on 127.0.0.1 (port 0) in a thread. ``routes[path] = (bytes, behaviour)``; every request's
    (path, Range header, status) is logged. Behaviours: ``ok`` (honours Range), ``norange`` (always 200, the
    whole file), ``truncate_once`` (the first answer promises the whole file and stops half way), ``404``,
    ``stall`` (sends nothing), ``half_then_stall`` (sends half the file, then nothing)."""

    def __init__(self):
        self.routes: dict[str, tuple[bytes, str]] = {}
        self.log: list[tuple[str, str | None, int]] = []
        self.release = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                data, how = outer.routes.get(self.path, (b"", "404"))
                rng = self.headers.get("Range")
                first = not any(p == self.path for p, _, _ in outer.log)
                if how == "404":
                    outer.log.append((self.path, rng, 404))
                    self.send_error(404, "Not Found")
                    return
                if how == "stall":
                    outer.log.append((self.path, rng, 0))
                    outer.release.wait(30)
                    return
                start = 0
                if rng and how != "norange":
                    start = int(rng.split("=")[1].split("-")[0])
                if start >= len(data) and rng and how != "norange":
                    outer.log.append((self.path, rng, 416))
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 206 if start else 200
                outer.log.append((self.path, rng, status))
                self.send_response(status)
                body = data[start:]
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if (how == "truncate_once" and first) or how == "half_then_stall":
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    if how == "half_then_stall":
                        outer.release.wait(30)
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def serve(server, monkeypatch, name: str, archive: bytes, how="ok", md5=None, path=None) -> str:
    """Point the table's entry for ``name`` at the loopback server (the archive's own MD5 unless given)."""
    entry = F.ARCHIVES[name]
    path = path or f"/{name}/{entry.filename}"
    server.routes[path] = (archive, how)
    url = server.base + path
    monkeypatch.setitem(F.ARCHIVES, name, dataclasses.replace(
        entry, url=url, md5=md5 or hashlib.md5(archive).hexdigest()))
    monkeypatch.delenv(F.MIRROR_ENV, raising=False)
    return url


def listing(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) if root.exists() else []


def run_cli(capsys, *argv):
    rc = main(["data", "fetch", *argv, "--no-progress"])
    out = capsys.readouterr()
    return rc, out.out, out.err


# ---------------------------------------------------------------------------------------------- tests


def test_the_table_holds_the_published_addresses_and_checksums():
    assert {k: (a.url, a.md5, a.folder) for k, a in F.ARCHIVES.items()} == {
        "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
                    "cifar-10-batches-py"),
        "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85",
                     "cifar-100-python"),
        "stl10": ("http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz", "91f7769df0f17e558f3565bffb0c7dfb",
                  "stl10_binary"),
    }
    for a in F.ARCHIVES.values():
        assert a.url.endswith("/" + a.filename)


def test_mirror_replaces_only_the_base(monkeypatch):
    monkeypatch.setenv(F.MIRROR_ENV, "http://mirror.example/data/")
    assert F.archive_url("stl10") == "http://mirror.example/data/stl10_binary.tar.gz"
    assert F.archive_url("cifar10", mirror="") == F.ARCHIVES["cifar10"].url
    with pytest.raises(FlowKDError, match="fetchable: cifar10, cifar100, stl10"):
        F.archive_url("imagenet")


def test_good_cifar10_is_readable_by_flowkds_loader(tmp_path, server, monkeypatch, capsys):
    files, images, labels = cifar10_files()
    serve(server, monkeypatch, "cifar10", _tar(files))
    root = tmp_path / "data"
    rc, out, err = run_cli(capsys, "cifar10", "--root", str(root))
    assert rc == 0, err
    # exactly the folder the reader expects, no archive, .part, lock or temporary folder
    assert listing(root) == sorted(["cifar-10-batches-py"] + [f"cifar-10-batches-py/{n.split('/')[1]}" for n in files])
    train, test = load_dataset("cifar10", root)
    assert train.classes == [c.decode() for c in CIFAR10_NAMES]
    want = np.concatenate([images[f"data_batch_{k}"] for k in range(1, 6)]).reshape(-1, 3, 32, 32)
    assert np.array_equal(train.images.numpy(), want)
    assert train.labels.tolist() == sum((labels[f"data_batch_{k}"] for k in range(1, 6)), [])
    assert np.array_equal(test.images.numpy(), images["test_batch"].reshape(-1, 3, 32, 32))
    # a second fetch finds it and downloads nothing
    n = len(server.log)
    rc, out, _ = run_cli(capsys, "cifar10", "--root", str(root))
    assert rc == 0 and len(server.log) == n and str(root / "cifar-10-batches-py") in out


@pytest.mark.parametrize("name", ["cifar100", "stl10"])
def test_good_cifar100_and_stl10_land_where_the_readers_look(tmp_path, server, monkeypatch, name):
    files = cifar100_files() if name == "cifar100" else stl10_files()
    serve(server, monkeypatch, name, _tar(files))
    path = F.fetch(name, tmp_path, progress=False, log=lambda m: None)
    assert path == tmp_path / F.ARCHIVES[name].folder and listing(tmp_path)[0] == F.ARCHIVES[name].folder
    train, test = load_dataset(name, tmp_path)
    assert len(train) == (6 if name == "cifar100" else 3) and train.num_classes == (100 if name == "cifar100" else 10)


def test_config_download_true_fetches_when_missing(tmp_path, server, monkeypatch):
    files, _, _ = cifar10_files(per_batch=3)
    serve(server, monkeypatch, "cifar10", _tar(files))
    cfg = config_from_dict({"progress": False, "data": {"name": "cifar10", "root": str(tmp_path / "d"), "download": True}})
    train, test = load_data(cfg)
    assert (len(train), len(test)) == (15, 3) and len(server.log) == 1
    load_data(cfg)  # present: no second download
    assert len(server.log) == 1
    off = config_from_dict({"data": {"name": "cifar10", "root": str(tmp_path / "none")}})
    with pytest.raises(FlowKDError, match="data path not found"):
        load_data(off)  # download = false (the default) never reaches the network
    # a dataset with no download (e.g. the config's data.name overridden to an image folder) is read as it is
    other = config_from_dict({"data": {"name": "imagefolder", "root": str(tmp_path / "none"), "download": True}})
    with pytest.raises(FlowKDError, match="data path not found"):
        load_data(other)
    assert len(server.log) == 1


def test_corrupt_download_is_a_checksum_error_and_leaves_nothing(tmp_path, server, monkeypatch, capsys):
    files, _, _ = cifar10_files()
    archive = _tar(files)
    url = serve(server, monkeypatch, "cifar10", archive, md5=hashlib.md5(archive + b"!").hexdigest())
    root = tmp_path / "new" / "data"
    rc, _, err = run_cli(capsys, "cifar10", "--root", str(root))
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("flowkd: error: download of " + url + " is corrupt: MD5")
    assert "download it by hand from " + url in lines[0]
    assert not (tmp_path / "new").exists()  # the folders this call created are gone too


def test_truncated_transfer_resumes_with_range(tmp_path, server, monkeypatch):
    files, images, _ = cifar10_files(per_batch=50)
    archive = _tar(files)
    serve(server, monkeypatch, "cifar10", archive, how="truncate_once")
    msgs = []
    F.fetch("cifar10", tmp_path, progress=False, log=msgs.append)
    (p1, r1, s1), (p2, r2, s2) = server.log
    assert (r1, s1) == (None, 200) and s2 == 206 and r2 == f"bytes={len(archive) // 2}-"
    assert any("resuming" in m for m in msgs)
    train, test = load_dataset("cifar10", tmp_path)
    assert np.array_equal(test.images.numpy(), images["test_batch"].reshape(-1, 3, 32, 32))


@pytest.mark.parametrize("how", ["ok", "norange"])
def test_a_part_file_resumes_or_restarts_when_range_is_ignored(tmp_path, server, monkeypatch, how):
    files, images, _ = cifar10_files(per_batch=50)
    archive = _tar(files)
    serve(server, monkeypatch, "cifar10", archive, how=how)
    part = tmp_path / "cifar-10-python.tar.gz.part"
    part.write_bytes(archive[:1000])  # an earlier, interrupted run
    msgs = []
    F.fetch("cifar10", tmp_path, progress=False, log=msgs.append)
    assert server.log == [("/cifar10/cifar-10-python.tar.gz", "bytes=1000-", 206 if how == "ok" else 200)]
    assert any("ignored the resume request" in m for m in msgs) == (how == "norange")
    assert listing(tmp_path)[0] == "cifar-10-batches-py" and not part.exists()
    _, test = load_dataset("cifar10", tmp_path)
    assert np.array_equal(test.images.numpy(), images["test_batch"].reshape(-1, 3, 32, 32))


def test_a_complete_part_file_is_verified_not_downloaded_again(tmp_path, server, monkeypatch):
    files, _, _ = cifar10_files()
    archive = _tar(files)
    serve(server, monkeypatch, "cifar10", archive)
    (tmp_path / "cifar-10-python.tar.gz.part").write_bytes(archive)
    F.fetch("cifar10", tmp_path, progress=False, log=lambda m: None)
    assert [s for _, _, s in server.log] == [416]
    assert listing(tmp_path)[0] == "cifar-10-batches-py"


def _link(kind):
    info = tarfile.TarInfo("cifar-10-batches-py/evil")
    if kind == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    elif kind == "hardlink":
        info.type, info.linkname = tarfile.LNKTYPE, "cifar-10-batches-py/test_batch"
    elif kind == "device":
        info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    return info


@pytest.mark.parametrize("kind, why", [
    ("dotdot", "a '..' component"), ("absolute", "an absolute path"), ("symlink", "a symbolic link"),
    ("hardlink", "a hard link"), ("device", "a device"), ("outside", "lies outside cifar-10-batches-py/"),
])
def test_unsafe_archives_are_refused_and_leave_nothing(tmp_path, server, monkeypatch, capsys, kind, why):
    files, _, _ = cifar10_files()
    extra = []
    if kind == "dotdot":
        files["cifar-10-batches-py/../../escaped"] = b"x"
    elif kind == "absolute":
        files["/tmp/flowkd-test-absolute"] = b"x"
    elif kind == "outside":
        files["other/file"] = b"x"
    else:
        extra.append(_link(kind))
    serve(server, monkeypatch, "cifar10", _tar(files, extra))
    root = tmp_path / "data"
    rc, _, err = run_cli(capsys, "cifar10", "--root", str(root))
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "is refused" in err and why in err and "nothing was extracted" in err
    assert not root.exists() and not (tmp_path / "escaped").exists()
    assert listing(tmp_path) == []


def test_404_is_one_line_with_the_address_and_what_to_do(tmp_path, server, monkeypatch, capsys):
    url = serve(server, monkeypatch, "cifar10", b"", how="404")
    root = tmp_path / "data"
    rc, _, err = run_cli(capsys, "cifar10", "--root", str(root))
    assert rc == 2
    assert err.strip() == (f"flowkd: error: download of {url} failed: HTTP 404 Not Found (download it by hand "
                           f"from {url} and place it at {root / 'cifar-10-python.tar.gz'}, then rerun)")
    assert not root.exists()


def test_stalling_server_times_out_with_a_clear_error(tmp_path, server, monkeypatch, capsys):
    url = serve(server, monkeypatch, "cifar10", b"", how="stall")
    t0 = time.perf_counter()
    rc, _, err = run_cli(capsys, "cifar10", "--root", str(tmp_path), "--timeout", "0.5")
    assert rc == 2 and time.perf_counter() - t0 < 10
    line, = err.strip().splitlines()
    assert line.startswith(f"flowkd: error: download of {url} failed:") and "timed out" in line
    assert f"place it at {tmp_path / 'cifar-10-python.tar.gz'}, then rerun" in line
    assert listing(tmp_path) == []


def test_stall_mid_transfer_keeps_the_part_then_resumes(tmp_path, server, monkeypatch, capsys):
    files, _, _ = cifar10_files(per_batch=50)
    archive = _tar(files)
    url = serve(server, monkeypatch, "cifar10", archive, how="half_then_stall")
    rc, _, err = run_cli(capsys, "cifar10", "--root", str(tmp_path), "--timeout", "0.5")
    assert rc == 2 and "timed out" in err and "rerun to resume" in err
    part = tmp_path / "cifar-10-python.tar.gz.part"
    kept = part.stat().st_size
    assert len(archive) // 2 <= kept < len(archive) and listing(tmp_path) == [part.name]
    # each stalled answer that brought bytes was followed by a resume from where it stopped (5 retries)
    assert [r for _, r, _ in server.log][1:] != [] and len(server.log) == 6
    assert all(r == f"bytes={int(r[6:-1])}-" and int(r[6:-1]) >= len(archive) // 2 for _, r, _ in server.log[1:])
    server.routes[url[len(server.base):]] = (archive, "ok")  # the server recovers
    rc, _, err = run_cli(capsys, "cifar10", "--root", str(tmp_path))
    assert rc == 0, err
    assert server.log[-1][1:] == (f"bytes={kept}-", 206)
    assert listing(tmp_path)[0] == "cifar-10-batches-py" and not part.exists()


def test_an_archive_placed_by_hand_is_used_and_kept(tmp_path, server, monkeypatch):
    files, _, _ = cifar10_files()
    archive = _tar(files)
    serve(server, monkeypatch, "cifar10", archive, how="404")
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(archive)
    F.fetch("cifar10", tmp_path, progress=False, log=lambda m: None)
    assert server.log == [] and (tmp_path / "cifar-10-python.tar.gz").is_file()
    assert len(load_dataset("cifar10", tmp_path)[0]) == 20
    # a wrong file placed by hand is named, and left alone
    other = tmp_path / "other"
    other.mkdir()
    (other / "cifar-10-python.tar.gz").write_bytes(archive[:-10])
    with pytest.raises(FlowKDError, match="not the archive from"):
        F.fetch("cifar10", other, progress=False, log=lambda m: None)
    assert listing(other) == ["cifar-10-python.tar.gz"]


def test_plain_progress_line_without_tqdm(tmp_path, server, monkeypatch, capsys):
    files, _, _ = cifar10_files()
    serve(server, monkeypatch, "cifar10", _tar(files))
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # import fails: the plain line is used
    F.fetch("cifar10", tmp_path, progress=True, log=lambda m: None)
    err = capsys.readouterr().err
    assert "cifar10:" in err and "MiB (100 %)" in err and "MiB/s" in err


def test_an_incomplete_target_folder_is_not_overwritten(tmp_path, monkeypatch):
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "batches.meta").write_bytes(b"")
    with pytest.raises(FlowKDError, match="exists but is incomplete .*remove it and rerun"):
        F.fetch("cifar10", tmp_path, progress=False)
