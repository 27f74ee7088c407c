import concurrent.futures

import pytest

from unisup import storage


@pytest.fixture(params=["local", "gcs"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "store")
    bucket = request.getfixturevalue("gcs_emulator")
    return f"gs://{bucket}/{tmp_path.name}"


def test_bytes_roundtrip_and_listing(root, tmp_path):
    storage.write_bytes(storage.join(root, "a/x.bin"), b"\x00\x01")
    storage.write_text(storage.join(root, "a/b/y.txt"), "héllo")
    assert storage.read_bytes(storage.join(root, "a/x.bin")) == b"\x00\x01"
    assert storage.read_text(storage.join(root, "a/b/y.txt")) == "héllo"
    assert storage.exists(storage.join(root, "a/x.bin"))
    assert not storage.exists(storage.join(root, "a/missing"))
    listed = storage.list_prefix(storage.join(root, "a"))
    assert [u.rsplit("/a/", 1)[1] for u in listed] == ["b/y.txt", "x.bin"]


def test_files_and_directories(root, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "one.txt").write_text("1")
    (src / "sub" / "two.txt").write_text("2")
    written = storage.upload_dir(src, storage.join(root, "dir"))
    assert len(written) == 2
    out = storage.download_dir(storage.join(root, "dir"), tmp_path / "out")
    assert (out / "sub" / "two.txt").read_text() == "2"
    with storage.local_copy(storage.join(root, "dir/one.txt")) as path:
        assert path.read_text() == "1"


def test_conditional_write(root):
    uri = storage.join(root, "config.json")
    assert storage.generation(uri) == 0
    first = storage.write_text(uri, "v1", if_generation_match=0)
    assert storage.generation(uri) == first
    with pytest.raises(storage.PreconditionFailed):
        storage.write_text(uri, "lost", if_generation_match=0)
    second = storage.write_text(uri, "v2", if_generation_match=first)
    assert second != first and storage.read_text(uri) == "v2"
    with pytest.raises(storage.PreconditionFailed):
        storage.write_text(uri, "stale", if_generation_match=first)


def test_concurrent_conditional_writes_lose_nothing(root):
    """Writers that read-modify-write with a generation precondition never lose an update."""
    uri = storage.join(root, "counter.txt")
    storage.write_text(uri, "0", if_generation_match=0)

    def increment() -> None:
        while True:
            gen = storage.generation(uri)
            value = int(storage.read_text(uri))
            try:
                storage.write_text(uri, str(value + 1), if_generation_match=gen)
                return
            except storage.PreconditionFailed:
                continue

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: increment(), range(8)))
    assert storage.read_text(uri) == "8"


def test_bad_uri():
    with pytest.raises(ValueError, match="bucket"):
        storage.read_bytes("gs:///x")


def test_gcs_client_uses_a_mounted_key_file_only_when_it_exists(tmp_path, monkeypatch):
    from google.cloud import storage as gcs

    class FakeClient:
        def __init__(self):
            self.source = "default credentials"

        @classmethod
        def from_service_account_json(cls, path):
            client = cls()
            client.source = path
            return client

    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setattr(gcs, "Client", FakeClient)
    key = tmp_path / "key.json"
    monkeypatch.setenv(storage.GCP_KEY_ENV, str(key))
    storage.gcs_client.cache_clear()
    try:
        assert storage.gcs_client().source == "default credentials"  # the optional secret is not mounted
        key.write_text("{}")
        storage.gcs_client.cache_clear()
        assert storage.gcs_client().source == str(key)
    finally:
        storage.gcs_client.cache_clear()


def test_content_digest_of_a_file_and_a_folder_is_the_same_local_and_on_gcs(root):
    storage.write_text(storage.join(root, "d/x.txt"), "x")
    storage.write_text(storage.join(root, "d/sub/y.txt"), "y")
    file_digest, folder_digest = (
        storage.content_digest(storage.join(root, "d/x.txt")),
        storage.content_digest(storage.join(root, "d")),
    )
    assert len(file_digest) == 64 and file_digest != folder_digest
    storage.write_text(storage.join(root, "d/sub/y.txt"), "changed")
    assert storage.content_digest(storage.join(root, "d")) != folder_digest
    assert storage.content_digest(storage.join(root, "d/x.txt")) == file_digest
    with pytest.raises(FileNotFoundError):
        storage.content_digest(storage.join(root, "nothing-here"))


def test_content_digest_does_not_depend_on_the_backend(gcs_emulator, tmp_path):
    local = tmp_path / "store"
    remote = f"gs://{gcs_emulator}/{tmp_path.name}-digest"
    for base in (str(local), remote):
        storage.write_text(storage.join(base, "f/a.txt"), "a")
        storage.write_text(storage.join(base, "f/b/c.txt"), "c")
    assert storage.content_digest(str(local / "f")) == storage.content_digest(f"{remote}/f")
    assert storage.content_digest(str(local / "f" / "a.txt")) == storage.content_digest(f"{remote}/f/a.txt")
