"""The stores stop a download at the size the caller takes, on the object's size or while reading."""

import io

import pytest

from mlserver_mme.artifacts.store import LocalStore, ObjectTooLarge, _copy_at_most


def test_a_local_object_over_the_limit_is_refused_before_it_is_copied(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.tar.gz").write_bytes(b"x" * 1000)
    store = LocalStore(str(tmp_path / "models"))
    with pytest.raises(ObjectTooLarge, match="1000 bytes or more, more than 999"):
        store.fetch("m.tar.gz", str(tmp_path / "copy"), max_bytes=999)
    assert not (tmp_path / "copy").exists()
    assert store.fetch("m.tar.gz", str(tmp_path / "copy"), max_bytes=1000).size == 1000
    assert (tmp_path / "copy").read_bytes() == b"x" * 1000


def test_a_stream_longer_than_it_said_stops_as_soon_as_it_passes_the_limit(tmp_path):
    class Endless(io.RawIOBase):
        reads = 0

        def read(self, size=-1):
            self.reads += 1
            return b"y" * size

    source = Endless()
    with pytest.raises(ObjectTooLarge, match="more than 3000000"):
        _copy_at_most(source, str(tmp_path / "out"), 3_000_000, "s3://bucket/m.tar.gz")
    assert source.reads == 3  # three 1 MiB reads pass 3,000,000 bytes: no fourth
    assert (tmp_path / "out").stat().st_size <= 3_000_000


@pytest.mark.parametrize(
    "environment, region",
    [
        ({"AWS_REGION": "eu-west-1"}, "eu-west-1"),  # alone: botocore by itself would talk to us-east-1
        ({"AWS_DEFAULT_REGION": "ap-south-1"}, "ap-south-1"),
        ({"AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "ap-south-1"}, "eu-west-1"),  # as the AWS SDKs rank them
    ],
)
def test_the_s3_client_takes_its_region_from_aws_region_too(monkeypatch, tmp_path, environment, region):
    from mlserver_mme.artifacts.store import S3Store

    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    # the client's region: the one its requests are sent to and signed for (their SigV4 scope)
    assert S3Store("bucket", "models/")._client.meta.region_name == region
