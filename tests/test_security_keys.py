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


def test_generate_keys_leaves_only_the_pair(tmp_path):
    """The pair is made in a private temporary directory and linked into
    place: nothing else is left, and a half-taken name (only the public
    file there) leaves the directory as it was."""
    generate_keys(str(tmp_path), "a")
    assert sorted(os.listdir(tmp_path)) == ["a.key", "a.key_secret"]
    (tmp_path / "b.key").write_text("someone's\n")
    with pytest.raises(FileExistsError, match="b.key"):
        generate_keys(str(tmp_path), "b")
    assert sorted(os.listdir(tmp_path)) == ["a.key", "a.key_secret", "b.key"]
    assert (tmp_path / "b.key").read_text() == "someone's\n"


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_a_secret_key_readable_by_others_is_warned_about(tmp_path, caplog):
    from pylm.security import Security

    _, secret = generate_keys(str(tmp_path), "server")
    with caplog.at_level("WARNING", logger="pylm.security"):
        Security.for_server(secret)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    os.chmod(secret, 0o644)
    with caplog.at_level("WARNING", logger="pylm.security"):
        Security.for_server(secret)
    assert any("readable by others" in r.getMessage() and secret in r.getMessage()
               for r in caplog.records if r.levelname == "WARNING"), caplog.text


def test_key_paths_bytes_directories_and_secrets_given_as_server_key(tmp_path, caplog,
                                                                     monkeypatch):
    from pylm.security import ENV_AUTHORIZED_KEYS, ENV_SECRET_KEY, ENV_SERVER_KEY, Security

    for name in (ENV_SECRET_KEY, ENV_SERVER_KEY, ENV_AUTHORIZED_KEYS):
        monkeypatch.delenv(name, raising=False)
    public, secret = generate_keys(str(tmp_path / "server"), "server")
    client_public, _ = generate_keys(str(tmp_path / "client"), "client")
    # bytes paths are decoded at construction, and the provider reads them
    made = Security.for_server(os.fsencode(secret),
                               authorized_keys=os.fsencode(str(tmp_path / "client")))
    assert made.authorized_keys == str(tmp_path / "client")
    z85 = zmq.auth.load_certificate(client_public)[0]
    assert made.provider().callback("domain", z85)
    assert Security.for_client(server_key=pathlib.Path(public)).server_key \
        == zmq.auth.load_certificate(public)[0]
    # a directory given as a key file says so
    with pytest.raises(IsADirectoryError, match="directory"):
        Security.for_server(str(tmp_path / "server"))
    # the server's secret handed to clients as server_key: used, but warned
    with caplog.at_level("WARNING", logger="pylm.security"):
        assert Security.for_client(server_key=secret).server_key \
            == zmq.auth.load_certificate(public)[0]
    assert any("server_key" in r.getMessage() and "secret" in r.getMessage()
               for r in caplog.records if r.levelname == "WARNING"), caplog.text
