"""fetch-weights: downloading, resuming, verifying, mirroring and carrying weight files.

Every download comes from a server started here on 127.0.0.1 (a ``ThreadingHTTPServer`` that
serves a folder, honours ``Range`` and can drop a connection half-way), reached through
``--mirror``; any other connection fails the test. The served files are real: a torch state
dict of a timm ResNet-18 (torchgeo's layout) named with its own SHA-256 prefix as torch hub
names files, and a safetensors file of smp's ResNet-18 encoder in the Hub's layout. The caches
(``TORCH_HOME``, ``HF_HUB_CACHE``) live under tmp_path.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import torch

from loveda_utils.cli import main
from loveda_utils.errors import ConfigError, WeightsError
from loveda_utils.models.fetch import SUMS_FILE, fetch, layout_path, needed_files
from loveda_utils.models.registry import available_models
from loveda_utils.models.weights import weight_files
from loveda_utils.models.wrapper import build_model

TORCH_MODEL = "unet_resnet18_ssl4eo_moco"  # torchgeo weights: a torch hub file
HF_MODEL = "unet_resnet18"  # smp ImageNet encoder: a Hugging Face file


# --------------------------------------------------------------------------- network and caches


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Connections other than to 127.0.0.1 fail loudly; no proxy stands in between.

    Replaces the model tests' ``_no_network`` (tests/models/conftest.py), which refuses even
    the loopback server these tests download from.
    """
    connect = socket.socket.connect

    def loopback(self: socket.socket, address: object) -> None:
        host = address[0] if isinstance(address, tuple) else address
        if host != "127.0.0.1":
            raise AssertionError(f"network access attempted: {address}")
        connect(self, address)  # type: ignore[arg-type]

    monkeypatch.setattr(socket.socket, "connect", loopback)
    for var in ("http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.upper(), raising=False)


@pytest.fixture
def caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    return use_caches(tmp_path / "machine", monkeypatch)


def use_caches(root: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Point the torch hub and Hugging Face caches at ``root`` (a fresh machine)."""
    monkeypatch.setenv("TORCH_HOME", str(root / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(root / "hf"))
    assert Path(torch.hub.get_dir()) == root / "torch" / "hub"
    return {"checkpoints": root / "torch" / "hub" / "checkpoints", "hf": root / "hf"}


# --------------------------------------------------------------------------- the server


@dataclass
class Served:
    root: Path
    url: str = ""
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    headers: dict[str, dict[str, str]] = field(default_factory=dict)  # extra headers per path
    drop_once: set[str] = field(default_factory=set)  # paths whose next GET stops half-way
    ignore_range: bool = False  # answer Range requests with the whole file, as some servers do

    def gets(self, path: str) -> list[str | None]:
        """The Range header of every GET of ``path``."""
        return [rng for method, p, rng in self.requests if method == "GET" and p == path]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ThreadingHTTPServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        state: Served = self.server.served  # type: ignore[attr-defined]
        path = unquote(urlparse(self.path).path).lstrip("/")
        wanted = self.headers.get("Range")
        state.requests.append((self.command, path, wanted))
        file = state.root / path
        if not file.is_file():
            self.send_error(404)
            return
        data = file.read_bytes()
        start = 0
        if wanted is not None and not state.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", wanted)[1])  # type: ignore[index]
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        for name, value in state.headers.get(path, {}).items():
            self.send_header(name, value)
        self.end_headers()
        if not body:
            return
        if path in state.drop_once:  # half the bytes, then the connection goes away
            state.drop_once.discard(path)
            self.wfile.write(data[start : start + (len(data) - start) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(data[start:])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Served]:
    served = Served(tmp_path / "served")
    served.root.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.served = served  # type: ignore[attr-defined]
    served.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield served
    httpd.shutdown()
    httpd.server_close()
    thread.join()


# --------------------------------------------------------------------------- real weight files


@dataclass(frozen=True)
class Weights:
    torch_file: Path  # torch.save of a timm ResNet-18, named <stem>-<sha256 prefix>.pth
    torch_state: dict[str, torch.Tensor]
    hf_file: Path  # safetensors of smp's ResNet-18 encoder
    hf_state: dict[str, torch.Tensor]


def randomized(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        k: torch.rand(v.shape, generator=gen) + 0.5 if k.endswith("running_var")
        else torch.randn(v.shape, generator=gen) if v.is_floating_point() else v.clone()
        for k, v in state.items()
    }  # fmt: skip


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Weights:
    import timm
    from safetensors.torch import save_file
    from segmentation_models_pytorch.encoders import get_encoder

    folder = tmp_path_factory.mktemp("weights")
    torch_state = randomized(timm.create_model("resnet18").state_dict(), seed=1)
    saved = folder / "resnet18.pth"
    torch.save(torch_state, saved)
    torch_file = saved.rename(folder / f"resnet18_sentinel2_rgb_moco-{sha256(saved)[:8]}.pth")
    hf_state = randomized(get_encoder("resnet18").state_dict(), seed=2)
    hf_file = folder / "model.safetensors"
    save_file(hf_state, str(hf_file))
    return Weights(torch_file, torch_state, hf_file, hf_state)


@pytest.fixture
def torch_url(weights: Weights, monkeypatch: pytest.MonkeyPatch) -> str:
    """torchgeo's URL for TORCH_MODEL with the served file's name (its hash differs)."""
    from torchgeo.models import ResNet18_Weights

    entry = ResNet18_Weights.SENTINEL2_RGB_MOCO.value
    url = entry.url.rsplit("/", 1)[0] + "/" + weights.torch_file.name
    monkeypatch.setattr(entry, "url", url)
    return url


def serve(served: Served, source: Path, model: str) -> str:
    """Put ``source`` where a mirror holds ``model``'s weight file; its layout path."""
    [file] = weight_files(model)
    key = layout_path(file)
    (served.root / key).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, served.root / key)
    return key


def fetch_cli(served: Served, *models: str, extra: tuple[str, ...] = ()) -> int:
    return main(["fetch-weights", "--models", ",".join(models), "--mirror", served.url, *extra])


def assert_loaded(module: torch.nn.Module, saved: dict[str, torch.Tensor]) -> None:
    loaded = module.state_dict()
    keys = [k for k, v in loaded.items() if v.is_floating_point()]
    assert keys
    for key in keys:
        torch.testing.assert_close(loaded[key], saved[key], rtol=0, atol=0, msg=key)


def files_under(folder: Path) -> list[Path]:
    """Every file and link below ``folder`` (none when it does not exist)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() or p.is_symlink())


# --------------------------------------------------------------------------- which files


def test_weight_files_are_what_the_loader_reads_and_its_error_names(
    caches: dict[str, Path],
) -> None:
    [tv] = weight_files("fcn_resnet50")
    assert tv.url == "https://download.pytorch.org/models/resnet50-0676ba61.pth"
    assert tv.path == caches["checkpoints"] / "resnet50-0676ba61.pth"
    assert tv.sha256_prefix == "0676ba61" and tv.hf_file is None
    [hf] = weight_files(HF_MODEL)
    repo, filename, revision = hf.hf_file  # type: ignore[misc]
    assert (repo, filename) == ("smp-hub/resnet18.imagenet", "model.safetensors")
    assert (
        hf.path
        == caches["hf"] / "models--smp-hub--resnet18.imagenet" / "snapshots" / revision / filename
    )
    assert hf.url.endswith(f"/smp-hub/resnet18.imagenet/resolve/{revision}/model.safetensors")
    assert weight_files(HF_MODEL, "none") == [] and weight_files(HF_MODEL, "some/file.pth") == []
    for model, pretrained, command in [
        (TORCH_MODEL, "default", f"python -m loveda_utils fetch-weights --models {TORCH_MODEL}`"),
        (HF_MODEL, "default", f"python -m loveda_utils fetch-weights --models {HF_MODEL}`"),
        (TORCH_MODEL, "imagenet",
         f"fetch-weights --models {TORCH_MODEL} --pretrained imagenet`"),
    ]:  # fmt: skip
        [file] = weight_files(model, pretrained)
        with pytest.raises(WeightsError) as info:
            build_model(model, pretrained=pretrained)
        message = str(info.value)
        assert command in message and str(file.path) in message and file.url in message


def test_every_choice_and_family_says_which_files_it_reads() -> None:
    from loveda_utils.models.weights import (
        IMAGENET_FILES,
        IMAGENET_SOURCES,
        KEYWORD_FILES,
        KEYWORD_SOURCES,
    )

    assert set(KEYWORD_FILES) == set(KEYWORD_SOURCES)
    assert set(IMAGENET_FILES) == set(IMAGENET_SOURCES)


@pytest.mark.parametrize("name", available_models())
def test_every_registry_default_names_a_fetchable_file(caches: dict[str, Path], name: str) -> None:
    [file] = weight_files(name)
    assert file.model == name and file.url.startswith("https://")
    if file.hf_file is None:  # torch hub files carry their hash, as torchvision/torchgeo name them
        assert file.path.parent == caches["checkpoints"] and file.sha256_prefix
    else:
        assert file.path.is_relative_to(caches["hf"])
    assert layout_path(file).startswith(("torch/hub/checkpoints/", "hf/"))


def test_mmseg_profile_check_lists_every_model(caches: dict[str, Path], capsys) -> None:
    from loveda_utils.benchmark.profiles import get_profile

    assert main(["fetch-weights", "--profile", "mmseg", "--check"]) == 1
    out = capsys.readouterr().out
    models = list(get_profile("mmseg").models)
    rows = [line for line in out.splitlines() if line.split(" ", 1)[0] in models]
    assert len(rows) == len(models) and all(row.endswith("missing") for row in rows)
    assert "resnet50-0676ba61.pth" in out and "smp-hub/mit_b2.imagenet/model.safetensors" in out
    files = {file.path for file in needed_files(models)}
    assert sum(f"missing: {path} " in out for path in files) == len(files)


# --------------------------------------------------------------------------- fetching


@pytest.mark.parametrize("retries", [-1, 1.5, None])
def test_fetch_refuses_retries_below_zero_before_reading_anything(retries) -> None:
    """``retries=-1`` used to run as 0; no file list or mirror is read first."""
    with pytest.raises(ConfigError, match=rf"retries={retries!r}: must be an integer >= 0"):
        fetch(needed_files([TORCH_MODEL]), "http://127.0.0.1:9/unused", retries=retries)


def test_fetch_places_files_where_build_model_reads_them_offline(
    caches: dict[str, Path], server: Served, weights: Weights, torch_url: str, capsys
) -> None:
    from huggingface_hub import hf_hub_download, scan_cache_dir

    torch_key = serve(server, weights.torch_file, TORCH_MODEL)
    hf_key = serve(server, weights.hf_file, HF_MODEL)
    assert fetch_cli(server, TORCH_MODEL, HF_MODEL) == 0
    assert "2 files: 2 fetched" in capsys.readouterr().out
    assert (
        caches["checkpoints"] / weights.torch_file.name
    ).read_bytes() == weights.torch_file.read_bytes()

    # The Hub cache as huggingface_hub writes it: blobs/<sha256>, a relative snapshot link.
    [hf] = weight_files(HF_MODEL)
    repo_id, filename, revision = hf.hf_file  # type: ignore[misc]
    blob = caches["hf"] / "models--smp-hub--resnet18.imagenet" / "blobs" / sha256(weights.hf_file)
    assert hf.path.is_symlink() and hf.path.resolve() == blob
    assert not os.path.isabs(os.readlink(hf.path))
    scan = scan_cache_dir(caches["hf"])
    assert not scan.warnings
    [repo] = scan.repos
    [cached_revision] = repo.revisions
    assert (repo.repo_id, cached_revision.commit_hash) == (repo_id, revision)
    assert [f.file_name for f in cached_revision.files] == [filename]
    assert hf_hub_download(repo_id, filename, revision=revision, cache_dir=caches["hf"],
                           local_files_only=True) == str(hf.path)  # fmt: skip

    unet = build_model(HF_MODEL, pretrained="default")
    assert_loaded(unet.net.encoder, weights.hf_state)
    moco = build_model(TORCH_MODEL, pretrained="default")
    assert_loaded(
        moco.net.encoder, {k: v for k, v in weights.torch_state.items() if "fc." not in k}
    )
    assert moco.pretrained == "ResNet18_Weights.SENTINEL2_RGB_MOCO"

    # A second run finds both and downloads nothing.
    gets = len([r for r in server.requests if r[0] == "GET"])
    assert fetch_cli(server, TORCH_MODEL, HF_MODEL) == 0
    assert "2 files: 2 present" in capsys.readouterr().out
    assert len([r for r in server.requests if r[0] == "GET"]) == gets
    assert server.gets(torch_key) == [None] and server.gets(hf_key) == [None]
    assert not [p for p in files_under(caches["hf"]) if p.name.endswith(".part")]


@pytest.mark.parametrize("kind", ["torch file, wrong hash", "truncated safetensors",
                                  "hub metadata, wrong sha256", "hub metadata, wrong size"])  # fmt: skip
def test_a_corrupt_download_is_refused_and_nothing_is_left(
    caches: dict[str, Path], server: Served, weights: Weights, tmp_path: Path, capsys, kind: str
) -> None:
    if kind.startswith("torch"):
        # The real torchgeo name, whose hash prefix (e3a335e3) this content does not have.
        model, key = TORCH_MODEL, serve(server, weights.torch_file, TORCH_MODEL)
        expected = "does not start with e3a335e3, the hash in its name"
    else:
        model, source = HF_MODEL, weights.hf_file
        if kind.startswith("truncated"):
            source = tmp_path / "cut.safetensors"
            source.write_bytes(weights.hf_file.read_bytes()[:-1000])
        key = serve(server, source, model)
        if kind.endswith("sha256"):
            server.headers[key] = {"X-Linked-Etag": f'"{"0" * 64}"'}
            expected = f"is not the expected {'0' * 16}"
        elif kind.endswith("size"):
            size = weights.hf_file.stat().st_size
            server.headers[key] = {"X-Linked-Etag": sha256(weights.hf_file),
                                   "X-Linked-Size": str(size + 1)}  # fmt: skip
            expected = f"{size} bytes where {size + 1} were expected"
        else:
            expected = "not a readable safetensors file"
    assert fetch_cli(server, model) == 1
    out = capsys.readouterr().out
    assert expected in out and "was deleted, nothing placed in the cache" in out
    assert files_under(caches["checkpoints"].parent.parent) == []
    assert files_under(caches["hf"]) == []
    with pytest.raises(WeightsError, match="not found offline"):
        build_model(model, pretrained="default")


def test_hub_metadata_verifies_a_hub_file(
    caches: dict[str, Path], server: Served, weights: Weights
) -> None:
    key = serve(server, weights.hf_file, HF_MODEL)
    server.headers[key] = {"X-Linked-Etag": f'"{sha256(weights.hf_file)}"',
                           "X-Linked-Size": str(weights.hf_file.stat().st_size)}  # fmt: skip
    assert fetch_cli(server, HF_MODEL) == 0
    assert ("HEAD", key, None) in server.requests
    assert_loaded(build_model(HF_MODEL, pretrained="imagenet").net.encoder, weights.hf_state)


def test_an_interrupted_download_resumes_with_a_range_request(
    caches: dict[str, Path], server: Served, weights: Weights, torch_url: str, capsys
) -> None:
    key = serve(server, weights.torch_file, TORCH_MODEL)
    server.drop_once.add(key)
    assert fetch_cli(server, TORCH_MODEL, extra=("--retries", "0")) == 1
    assert "run the same command again to resume" in capsys.readouterr().out
    part = caches["checkpoints"] / f"{weights.torch_file.name}.part"
    size = weights.torch_file.stat().st_size
    assert part.stat().st_size == size // 2
    assert not (caches["checkpoints"] / weights.torch_file.name).exists()

    assert fetch_cli(server, TORCH_MODEL) == 0
    assert server.gets(key) == [None, f"bytes={size // 2}-"]
    assert not part.exists()
    assert sha256(caches["checkpoints"] / weights.torch_file.name) == sha256(weights.torch_file)


@pytest.mark.parametrize("case", ["part already complete", "server ignores Range"])
def test_resuming_a_part_file_the_server_cannot_extend(
    caches: dict[str, Path], server: Served, weights: Weights, torch_url: str, case: str
) -> None:
    key = serve(server, weights.torch_file, TORCH_MODEL)
    data = weights.torch_file.read_bytes()
    part = caches["checkpoints"] / f"{weights.torch_file.name}.part"
    part.parent.mkdir(parents=True)
    if case == "part already complete":  # e.g. a run stopped between download and rename
        part.write_bytes(data)
        expected_range = f"bytes={len(data)}-"  # answered 416: nothing left to send
    else:
        part.write_bytes(data[:1000])
        server.ignore_range = True  # a 200 with the whole file: start over, do not append
        expected_range = "bytes=1000-"
    assert fetch_cli(server, TORCH_MODEL) == 0
    assert server.gets(key) == [expected_range]
    assert (caches["checkpoints"] / weights.torch_file.name).read_bytes() == data
    assert not part.exists()


def test_retries_resume_within_the_same_run(
    caches: dict[str, Path], server: Served, weights: Weights
) -> None:
    key = serve(server, weights.hf_file, HF_MODEL)
    server.drop_once.add(key)
    assert fetch_cli(server, HF_MODEL) == 0
    half = weights.hf_file.stat().st_size // 2
    assert server.gets(key) == [None, f"bytes={half}-"]
    assert_loaded(build_model(HF_MODEL, pretrained="default").net.encoder, weights.hf_state)


# --------------------------------------------------------------------------- check, export, import


def test_check_needs_no_network_and_reports_each_file(
    caches: dict[str, Path], server: Served, weights: Weights, torch_url: str, capsys
) -> None:
    serve(server, weights.torch_file, TORCH_MODEL)
    serve(server, weights.hf_file, HF_MODEL)
    check = ["fetch-weights", "--models", f"{TORCH_MODEL},{HF_MODEL}", "--check"]
    assert main(check) == 1
    out = capsys.readouterr().out
    assert re.search(
        rf"^{TORCH_MODEL} .* {re.escape(weights.torch_file.name)} +- +missing$", out, re.M
    )
    assert re.search(
        rf"^{HF_MODEL} .* smp-hub/resnet18.imagenet/model.safetensors +- +missing$", out, re.M
    )
    assert "the same command without --check" in out

    assert fetch_cli(server, TORCH_MODEL, HF_MODEL) == 0
    capsys.readouterr()
    before = len(server.requests)
    assert main(check) == 0
    out = capsys.readouterr().out
    mb = f"{weights.torch_file.stat().st_size / 1e6:.1f} MB"
    assert re.search(rf"^{TORCH_MODEL} .* {mb} +present$", out, re.M)
    assert len(server.requests) == before

    cached = caches["checkpoints"] / weights.torch_file.name
    data = bytearray(cached.read_bytes())
    data[len(data) // 2] ^= 0xFF
    cached.write_bytes(bytes(data))
    assert main(check) == 1
    assert f"corrupt: {cached} (SHA-256" in capsys.readouterr().out
    assert fetch_cli(server, TORCH_MODEL) == 0  # the corrupt copy is replaced
    assert sha256(cached) == sha256(weights.torch_file)


def test_export_import_round_trip_and_an_export_is_a_mirror(
    caches: dict[str, Path], server: Served, weights: Weights, torch_url: str,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys,
) -> None:  # fmt: skip
    serve(server, weights.torch_file, TORCH_MODEL)
    serve(server, weights.hf_file, HF_MODEL)
    models = f"{TORCH_MODEL},{HF_MODEL}"
    assert fetch_cli(server, TORCH_MODEL, HF_MODEL) == 0
    carried = tmp_path / "usb"
    assert main(["fetch-weights", "--models", models, "--to", str(carried)]) == 0
    torch_key, hf_key = (layout_path(f) for f in needed_files([TORCH_MODEL, HF_MODEL]))
    assert torch_key == f"torch/hub/checkpoints/{weights.torch_file.name}"
    assert re.fullmatch(
        r"hf/smp-hub/resnet18\.imagenet/resolve/[0-9a-f]{40}/model\.safetensors", hf_key
    )
    assert not (carried / hf_key).is_symlink()  # the content, not a link into this cache
    sums = (carried / SUMS_FILE).read_text().splitlines()
    assert sorted(sums) == sorted([f"{sha256(weights.torch_file)}  {torch_key}",
                                   f"{sha256(weights.hf_file)}  {hf_key}"])  # fmt: skip

    # Another machine: import from the folder, then build offline.
    use_caches(tmp_path / "other", monkeypatch)
    assert main(["fetch-weights", "--models", models, "--from", str(carried)]) == 0
    assert "2 files: 2 imported" in capsys.readouterr().out
    assert_loaded(build_model(HF_MODEL, pretrained="default").net.encoder, weights.hf_state)
    build_model(TORCH_MODEL, pretrained="default")

    # A third machine uses the exported folder as its mirror; its SHA256SUMS is read.
    server.root = carried
    use_caches(tmp_path / "third", monkeypatch)
    assert fetch_cli(server, TORCH_MODEL, HF_MODEL) == 0
    assert ("GET", SUMS_FILE, None) in server.requests

    # A folder file that does not match SHA256SUMS is refused on import.
    blob = (carried / hf_key).read_bytes()
    (carried / hf_key).write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))
    fourth = use_caches(tmp_path / "fourth", monkeypatch)
    assert main(["fetch-weights", "--models", HF_MODEL, "--from", str(carried)]) == 1
    assert f"is not the expected {sha256(weights.hf_file)[:16]}" in capsys.readouterr().out
    assert files_under(fourth["hf"]) == []


# --------------------------------------------------------------------------- CLI errors


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--models", "no_such_model", "--check"], "model='no_such_model' is not in the registry"),
        (["--models", HF_MODEL, "--mirror", "ftp://host/x"], "--mirror 'ftp://host/x': give an http(s) URL"),
        (["--models", HF_MODEL, "--from", "/no/such/folder"], "--from /no/such/folder: no such folder"),
        (["--models", "segformer_mit_b0", "--pretrained", "SENTINEL2_RGB_MOCO", "--check"], "mit_b0"),
    ],
)  # fmt: skip
def test_cli_errors_are_one_line_exit_2(
    caches: dict[str, Path], capsys, argv: list[str], expected: str
) -> None:
    assert main(["fetch-weights", *argv]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1


def test_nothing_to_fetch_without_pretrained_weights(caches: dict[str, Path], capsys) -> None:
    assert main(["fetch-weights", "--all", "--pretrained", "none", "--check"]) == 0
    assert "nothing to fetch" in capsys.readouterr().out
