import hashlib
import io
import shutil
import time
import urllib.error

import pytest

from winnow.models import sources
from winnow.models.errors import ModelNotFoundError
from winnow.models.generator import GeneratorParams, load_pipeline
from winnow.models.sources import ChecksumError, check_file_ref, download_path, resolve, resolve_file


def test_local_dir_and_fingerprint(tiny_sd):
    source = resolve(str(tiny_sd))
    assert source.kind == "local_dir" and source.path == tiny_sd
    assert source.fingerprint == resolve(str(tiny_sd)).fingerprint


def test_loading_is_cached_per_process(tiny_sd):
    params = GeneratorParams(model=str(tiny_sd))
    assert load_pipeline(params) is load_pipeline(params.model_copy(update={"steps": 3}))


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("someone/some-model@v1", r"not on this machine.*hub is unreachable.*hf download someone/some-model"),
        ("./missing-folder", "no such local path"),
        ("bundled:nope", "unknown bundled model 'nope'"),
    ],
)
def test_missing_models_give_one_actionable_line(ref, message):
    began = time.perf_counter()
    with pytest.raises(ModelNotFoundError, match=message) as err:
        resolve(ref)
    assert "\n" not in str(err.value)
    assert time.perf_counter() - began < 30  # offline is detected, not waited out


def test_a_single_model_repo_offline_is_one_line_too():
    with pytest.raises(
        ModelNotFoundError, match=r"not on this machine.*hf download madebyollin/taesd"
    ) as err:
        resolve("madebyollin/taesd", pipeline=False)
    assert "\n" not in str(err.value)


def test_non_checkpoint_file(tmp_path):
    path = tmp_path / "weights.bin.txt"
    path.write_text("x")
    with pytest.raises(ModelNotFoundError, match="not a checkpoint"):
        resolve(str(path))


def test_folder_that_is_not_a_pipeline(tmp_path):
    with pytest.raises(ModelNotFoundError, match="could not be loaded"):
        load_pipeline(GeneratorParams(model=str(tmp_path)))


# ------------------------------------------------------------------ single files (model heads)

AESTHETIC_URL = (  # the reference the shipped configs use
    "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/"
    "6934dd81792f086e613a121dbce43082cb8be85e/sac+logos+ava1-l14-linearMSE.pth"
    "#sha256=21dd590f3ccdc646f0d53120778b296013b096a035a2718c9cb0d511bff0f1e0"
)
NSFW_URL = (  # LAION's CLIP-based NSFW head, for the scorer that comes next
    "https://github.com/LAION-AI/CLIP-based-NSFW-Detector/raw/"
    "e8038cdb61f044b63f2dc11a400156b49dce612c/models/clip_ViT-L-14_openai_binary_nsfw_head.pth"
    "#sha256=fc4d70d2eea4e948d13bc27bf7114f5e8d3bd317eb01a4b49b35dcf1a3d672c6"
)
CONTENT = b"head weights"
PIN = hashlib.sha256(CONTENT).hexdigest()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty download cache, and no resolution remembered from another test."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    resolve_file.cache_clear()
    yield tmp_path / "xdg" / "winnow"
    resolve_file.cache_clear()


@pytest.fixture
def online(monkeypatch):
    """Hub offline mode off, and a fake network: ``served[url] = bytes``; ``requests`` lists
    the URLs fetched."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    served: dict[str, bytes] = {}
    requests: list[str] = []

    def urlopen(url, timeout):
        requests.append(url)
        if url not in served:
            raise urllib.error.URLError("no route to host")
        return io.BytesIO(served[url])

    monkeypatch.setattr(sources.urllib.request, "urlopen", urlopen)
    return served, requests


def no_partial_files(folder) -> bool:
    return not list(folder.rglob(".download-*"))


def test_pinned_url_is_downloaded_once_verified_and_kept(cache, online):
    served, requests = online
    served["https://example.org/w/head.pth"] = CONTENT
    ref = f"https://example.org/w/head.pth#sha256={PIN.upper()}"  # hex digits in either case
    source = resolve_file(ref)
    assert source.kind == "url" and source.fingerprint == PIN[:16]
    assert source.path == cache / "files" / PIN / "head.pth"
    assert source.path == download_path("https://example.org/w/head.pth", PIN)
    assert source.path.read_bytes() == CONTENT and no_partial_files(cache)
    resolve_file.cache_clear()  # a new process: the cached file is used, not downloaded again
    assert resolve_file(ref).path == source.path and requests == ["https://example.org/w/head.pth"]


def test_wrong_hash_is_one_line_and_nothing_is_kept(cache, online):
    served, _ = online
    served["https://example.org/head.pth"] = b"other bytes"
    with pytest.raises(ChecksumError, match=f"has sha256 .*, not the pinned {PIN}") as err:
        resolve_file(f"https://example.org/head.pth#sha256={PIN}")
    assert "\n" not in str(err.value)
    assert not download_path("https://example.org/head.pth", PIN).exists() and no_partial_files(cache)


def test_a_cached_file_that_was_altered_is_refused(cache):
    path = download_path("https://example.org/head.pth", PIN)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"tampered")
    with pytest.raises(ChecksumError, match="delete it"):
        resolve_file(f"https://example.org/head.pth#sha256={PIN}", "aesthetic head")


def test_offline_url_says_what_to_download_and_where(cache):
    url = "https://example.org/weights/head.pth"
    with pytest.raises(ModelNotFoundError) as err:  # HF_HUB_OFFLINE=1 (tests/conftest.py)
        resolve_file(f"{url}#sha256={PIN}", "aesthetic head")
    message = str(err.value)
    assert "\n" not in message and "HF_HUB_OFFLINE" in message
    assert f"download {url} and put it at {cache / 'files' / PIN / 'head.pth'}" in message
    assert "or give the path of a local copy" in message


def test_unreachable_host_is_the_same_one_line(cache, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    url = "https://winnow-test.invalid/head.pth"  # .invalid never resolves (RFC 2606)
    with pytest.raises(ModelNotFoundError, match=r"cannot be downloaded \(.*\); download") as err:
        resolve_file(f"{url}#sha256={PIN}")
    assert "\n" not in str(err.value) and no_partial_files(cache)


def test_hub_file_comes_from_hf_hub_download(tmp_path, monkeypatch):
    import huggingface_hub

    commit = "a" * 40
    calls = []

    def download(repo_id, filename, repo_type, revision):
        calls.append((repo_id, filename, repo_type, revision))
        path = tmp_path / "models--org--heads" / "snapshots" / commit / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(CONTENT)
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    resolve_file.cache_clear()
    source = resolve_file("hf://org/heads@v2/aesthetic/head.safetensors")
    assert calls == [("org/heads", "aesthetic/head.safetensors", "model", "v2")]
    assert source.kind == "hub_file" and source.fingerprint == commit and source.path.read_bytes() == CONTENT
    # The website's links name the same file.
    resolve_file("https://huggingface.co/org/heads/blob/main/head.pth")
    assert calls[-1] == ("org/heads", "head.pth", "model", "main")
    resolve_file.cache_clear()


def test_offline_hub_file_says_how_to_download_it():
    with pytest.raises(ModelNotFoundError) as err:  # HF_HUB_OFFLINE=1, nothing in the cache
        resolve_file("hf://someone/not-here@v1/heads/head.safetensors", "aesthetic head")
    message = str(err.value)
    assert "\n" not in message and message.startswith("aesthetic head 'hf://someone/not-here@v1/")
    assert "`hf download someone/not-here heads/head.safetensors --revision v1`" in message


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("https://example.org/head.pth", r"pin a download by its content, https://.*#sha256="),
        ("http://example.org/head.pth", "pin a download"),
        ("https://example.org/head.pth#sha256=abc", "pin a download"),
        (f"https://example.org/weights/#sha256={PIN}", "must end in a file name"),
        ("hf://org/name", "name one file in a model repo"),
        ("hf://buckets/org/name/head.pth", "name one file in a model repo"),
        ("hf://justone", "not a hub file reference"),
    ],
)
def test_malformed_file_references(ref, message):
    with pytest.raises(ValueError, match=message):
        check_file_ref(ref)
    with pytest.raises(ModelNotFoundError, match=message) as err:
        resolve_file(ref, "aesthetic head")
    assert "\n" not in str(err.value)


def test_local_and_bundled_files(tmp_path):
    path = tmp_path / "head.pth"
    path.write_bytes(CONTENT)
    assert resolve_file(str(path)).kind == "single_file"
    assert check_file_ref(str(tmp_path / "missing.pth"))  # existence is checked on use, not in configs
    with pytest.raises(ModelNotFoundError, match=r"does not exist; give a local file, hf://"):
        resolve_file(str(tmp_path / "missing.pth"))
    with pytest.raises(ModelNotFoundError, match="is a bundled folder, not a file"):
        resolve_file("bundled:shapes-sd")


@pytest.mark.parametrize("ref", [AESTHETIC_URL, NSFW_URL], ids=["laion-aesthetic", "laion-nsfw"])
def test_pinned_laion_references_match_the_published_files(ref, shared, cache):
    """The pins are the sha256 of the real files (../shared holds copies of the published ones):
    placed where the download would go, they verify, with no network."""
    name = ref.split("#")[0].rsplit("/", 1)[1]
    local = next(shared.glob(f"weights/*/{name}"), None)
    if local is None:
        pytest.skip(f"{name} not in {shared}/weights")
    url, sha256 = ref.split("#sha256=")
    path = download_path(url, sha256)
    path.parent.mkdir(parents=True)
    shutil.copyfile(local, path)
    source = resolve_file(ref)
    assert source.path == path and source.fingerprint == sha256[:16]
