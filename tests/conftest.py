"""Shared pytest fixtures: seeded generators, CUDA skipping, the tiny synthetic trainer run and a real HTTP
file server on 127.0.0.1 for the download tests.
"""

from __future__ import annotations

import http.server
import os
import socket
import threading

import pytest
import torch

# Tests use tiny tensors: one intra-op thread is as fast and avoids OpenMP spin-waiting on shared CPUs
# (measured here: 2 threads made small ops up to ~50x slower on a loaded 2-core machine).
torch.set_num_threads(1)


def pytest_addoption(parser):
    parser.addoption(
        "--parity-device", default=os.environ.get("WSSS_PARITY_DEVICE", "cuda"),
        help="device of the parity tests (tests/test_cuda_parity.py, marker 'parity'): 'cuda' (default; "
             "skipped without a GPU) or 'cpu', which runs the same comparisons CPU against CPU to check the "
             "tests themselves. Default: $WSSS_PARITY_DEVICE or cuda.")


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device")
    has_cuda = torch.cuda.is_available()
    parity_off_gpu = torch.device(config.getoption("--parity-device")).type != "cuda"
    for item in items:
        if "cuda" in item.keywords and not has_cuda and not (parity_off_gpu and "parity" in item.keywords):
            item.add_marker(skip_cuda)


@pytest.fixture
def parity_device(request) -> torch.device:
    """The device the parity tests compare against CPU float64/float32 references (``--parity-device``)."""
    return torch.device(request.config.getoption("--parity-device"))


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No test touches the network: registry weights that are not in a test's cache fail fast (tests of the
    downloader use the ``http_server`` fixture, which lifts this).
    """
    monkeypatch.setenv("WSSS_BLOCKS_OFFLINE", "1")
    monkeypatch.delenv("WSSS_BLOCKS_MIRROR", raising=False)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.fixture(autouse=True)
def _restore_threads():
    """Trainer runs set torch's thread count (runtime.threads); give the next test the original one."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


#: overrides of ``baseline_synthetic`` for a trainer run of a few seconds (16 train / 4 val images of 32 px)
TRAINER_TINY = [
    "data.synthetic.num_train=16", "data.synthetic.num_val=4", "data.synthetic.image_size=32",
    "data.synthetic.num_classes=5",
    "cam.backbone_kwargs={widths: [8, 8, 16], output_stride: 4}", "cam.batch_size=4", "cam.steps=4",
    "cam.resize_long=[28, 36]", "cam.crop_size=32",
    "pseudo.scales=[1.0, 0.5]", "pseudo.batch_size=8",
    "seg.backbone_kwargs={widths: [8, 8, 16], output_stride: 8}", "seg.batch_size=4", "seg.steps=3",
    "seg.crop_size=32", "seg.msc_train=[0.5]", "seg.eval_scales=[1.0]",
    "runtime.progress=false", "runtime.plots=false", "runtime.checkpoint_every=2", "runtime.log_every=1",
    "runtime.threads=1", "runtime.min_free_mb=1",
    "cam.pretrained=null", "seg.pretrained=null",  # random init: no pretraining on synthetic data in unit tests
]


@pytest.fixture(scope="session")
def trainer_tiny(tmp_path_factory):
    """:data:`TRAINER_TINY` plus a session-wide synthetic data cache (generated once)."""
    cache = tmp_path_factory.mktemp("trainer_cache")
    return [*TRAINER_TINY, f"data.synthetic.cache_dir={cache}"]


@pytest.fixture
def seg_run_pair():
    """``make(cfg, root) -> (a, b)``: CAM stage and pseudo masks in ``root/a``; ``root/b`` shares them (symlinks),
    so that two segmentation stages (e.g. uninterrupted and crashed-then-resumed) start from the same masks.
    """
    import os

    def make(cfg, root):
        from wsss_blocks.train.cam_stage import train_cam
        from wsss_blocks.train.pseudo_stage import make_pseudo_masks

        a, b = root / "a", root / "b"
        train_cam(cfg, a)
        make_pseudo_masks(cfg, a)
        b.mkdir()
        for d in ("cam", "pseudo"):
            os.symlink(a / d, b / d)
        return a, b

    return make


# ----------------------------------------------------------------------------------------------------------
# a real HTTP server on 127.0.0.1 (stdlib http.server in a thread) for the download code
# ----------------------------------------------------------------------------------------------------------
class _FileHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        srv = self.server
        path = self.path.split("?")[0]
        rng = self.headers.get("Range")
        entry = {"path": path, "range": rng, "status": 404, "sent": 0}
        srv.log.append(entry)
        data = srv.files.get(path)
        if data is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = 0
        if rng and path not in srv.no_range:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):
                entry["status"] = 416
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            entry["status"] = 206
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            entry["status"] = 200
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        cut = srv.drop_after.pop(path, None)  # drop the connection once, after `cut` body bytes
        if cut is not None:
            self.wfile.write(body[:cut])
            self.wfile.flush()
            entry["sent"] = cut
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(body)
        entry["sent"] = len(body)


@pytest.fixture
def http_server(monkeypatch):
    """A threaded HTTP/1.1 server on 127.0.0.1 serving ``srv.files`` (``{"/path": bytes}``).

    It honours ``Range`` (206 + ``Content-Range``) except for paths in ``srv.no_range``, drops the connection once
    after ``srv.drop_after[path]`` body bytes, and appends ``{"path", "range", "status", "sent"}`` to ``srv.log``
    for every request. ``srv.url`` is its base URL. ``WSSS_BLOCKS_OFFLINE`` (set for every other test) is lifted.
    """
    monkeypatch.delenv("WSSS_BLOCKS_OFFLINE", raising=False)  # 127.0.0.1 is the network of these tests
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FileHandler)
    srv.files, srv.log, srv.no_range, srv.drop_after = {}, [], set(), {}
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    t.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()
