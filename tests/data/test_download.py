"""download-data: torchgeo's LoveDA download from a server on 127.0.0.1, then the manifest check.

The zips are real zips in the release layout (``<Split>/<Scene>/{images_png,masks_png}/<id>.png``)
built here from generated 1024 px tiles. Each tile takes a release id whose row has no image MD5
and is drawn to agree with that row (size, channel means, mask class counts), so the check after
the download passes as it would on the release; torchgeo's own URLs and MD5s are monkeypatched
to point at the loopback server.
"""

from __future__ import annotations

import functools
import hashlib
import threading
import zipfile
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchgeo.datasets import LoveDA

from loveda_utils.cli import main as cli
from loveda_utils.data import manifest
from loveda_utils.data.classes import SCENES

SPLITS = ("Train", "Val")


def release_like_tile(row: manifest.ReleaseTile) -> tuple[np.ndarray, np.ndarray]:
    """(image, mask) with the row's size, channel means (to the pixel) and mask class counts."""
    pixels = row.width * row.height
    channels = []
    for mean in row.mean_rgb:
        total = round(mean * pixels)  # the channel sum that gives this mean
        base, extra = divmod(total, pixels)
        channel = np.full(pixels, base, dtype=np.uint8)
        channel[:extra] += 1
        channels.append(channel)
    image = np.stack(channels, axis=-1).reshape(row.height, row.width, 3)
    mask = np.repeat(np.arange(len(row.mask_counts), dtype=np.uint8), row.mask_counts)
    return image, mask.reshape(row.height, row.width)


def build_zip(split: str, out: Path) -> tuple[Path, list[int]]:
    """``<out>/<Split>.zip`` in the release layout: one tile per scene; returns it and the ids."""
    ids = []
    with zipfile.ZipFile(out / f"{split}.zip", "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for scene in SCENES:
            row = next(t for t in manifest.release_tiles().values()
                       if (t.split, t.scene) == (split, scene) and t.image_md5 is None)
            image, mask = release_like_tile(row)
            for folder, pixels in (("images_png", image), ("masks_png", mask)):
                png = out / f"{row.id}-{folder}.png"
                Image.fromarray(pixels).save(png)
                archive.write(png, f"{split}/{scene}/{folder}/{row.id}.png")
            ids.append(row.id)
    return out / f"{split}.zip", ids


class Server:
    """A static file server on 127.0.0.1 in a thread, counting the requests it answers."""

    def __init__(self, folder: Path) -> None:
        self.requests: list[str] = []
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args) -> None:  # keep test output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        if not self.thread.is_alive():
            return
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture(scope="module")
def zips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, list[int]]]:
    out = tmp_path_factory.mktemp("served")
    return {split: build_zip(split, out) for split in SPLITS}


@pytest.fixture
def server(zips: dict[str, tuple[Path, list[int]]]) -> Iterator[Server]:
    served = Server(next(iter(zips.values()))[0].parent)
    yield served
    served.close()


def _point_torchgeo_at(monkeypatch: pytest.MonkeyPatch, server: Server, zips, md5=None) -> None:
    for split, (path, _) in zips.items():
        monkeypatch.setitem(LoveDA.info_dict, split.lower(), {
            "url": f"{server.url}/{path.name}?download=1",  # Zenodo's query string, as released
            "filename": path.name,
            "md5": md5 or hashlib.md5(path.read_bytes()).hexdigest(),
        })


def test_download_extracts_and_checks(tmp_path: Path, server: Server, zips, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture) -> None:
    _point_torchgeo_at(monkeypatch, server, zips)
    root = tmp_path / "LoveDA"
    assert cli(["download-data", str(root), "--splits", "train,val"]) == 0
    out = capsys.readouterr().out
    assert sorted(server.requests) == ["/Train.zip?download=1", "/Val.zip?download=1"]
    for split, (_, ids) in zips.items():
        for scene, tile in zip(SCENES, ids):
            for folder in ("images_png", "masks_png"):
                assert (root / split / scene / folder / f"{tile}.png").is_file()
    assert "Release: 4 of 5,987 tiles (0.1%), Train/Urban 1 of 1,156" in out
    assert "OK: no problems found." in out
    # A second run finds the splits in place: nothing is fetched again.
    assert cli(["download-data", str(root), "--splits", "train,val", "--quick"]) == 0
    assert len(server.requests) == 2
    assert "not downloaded again" in capsys.readouterr().out


def test_wrong_md5_is_refused_naming_the_file(tmp_path: Path, server: Server, zips,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture) -> None:
    _point_torchgeo_at(monkeypatch, server, zips, md5="0" * 32)
    root = tmp_path / "LoveDA"
    assert cli(["download-data", str(root), "--splits", "train"]) == 2
    err = capsys.readouterr().err
    assert "Train.zip: 100%" in err  # torchgeo's progress bar
    actual = hashlib.md5(zips["Train"][0].read_bytes()).hexdigest()
    assert err.splitlines(keepends=True)[-1] == (f"error: {root / 'Train.zip'}: MD5 {actual} is not the release's {'0' * 32} "
                   f"(downloaded from {server.url}/Train.zip?download=1); the file was removed. "
                   "Run download-data again; if it repeats, the server's file has changed.\n")
    assert not (root / "Train.zip").exists() and not (root / "Train").exists()


def test_unreachable_server_names_the_url(tmp_path: Path, server: Server, zips,
                                          monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture) -> None:
    _point_torchgeo_at(monkeypatch, server, zips)
    server.close()  # nothing listens on that port any more
    assert cli(["download-data", str(tmp_path / "LoveDA"), "--splits", "val"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: Val.zip: could not download {server.url}/Val.zip?download=1 (")
    assert err.count("\n") == 1
