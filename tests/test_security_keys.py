"""pylm.security.generate_keys: files in ZeroMQ's certificate format."""

import os
import stat

import pathlib

import pytest
import zmq.auth

from pylm.security import generate_keys


def test_generate_keys_writes_a_loadable_pair(tmp_path):
    public, secret = generate_keys(str(tmp_path / "keys"), "server")
    assert public == str(tmp_path / "keys" / "server.key")
    assert secret == str(tmp_path / "keys" / "server.key_secret")
    pub_only, none = zmq.auth.load_certificate(public)
    pub, sec = zmq.auth.load_certificate(secret)
    assert none is None and pub == pub_only and len(pub) == 40 and len(sec) == 40
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600


def test_generate_keys_never_overwrites(tmp_path):
    public, _ = generate_keys(str(tmp_path), "a")
    before = pathlib.Path(public).read_bytes()
    with pytest.raises(FileExistsError):
        generate_keys(str(tmp_path), "a")
    assert pathlib.Path(public).read_bytes() == before


@pytest.mark.parametrize("name", ["", "a/b"])
def test_generate_keys_rejects_bad_names(tmp_path, name):
    with pytest.raises(ValueError):
        generate_keys(str(tmp_path), name)
