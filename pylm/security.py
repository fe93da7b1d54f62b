"""CURVE encryption and ZAP authentication for pylm's sockets
(shared/API.md, "Security").

Keys are ZeroMQ certificates, as ``zmq.auth.create_certificates`` writes
them: ``NAME.key`` holds the public key, ``NAME.key_secret`` both keys.
Generate them before serving (libzmq issue 4241: key generation while
other contexts run has aborted processes).
"""

import os

import zmq.auth

__all__ = ["generate_keys"]


def generate_keys(directory, name):
    """Write a new key pair, ``name.key`` (public) and ``name.key_secret``
    (secret, readable by its owner only) in `directory` (made if missing).

    :returns: ``(public_path, secret_path)``
    :raises ValueError: `name` is empty or holds a path separator
    :raises FileExistsError: a key of that name is already there (keys are
        never overwritten: peers may trust the old one)
    """
    if not name or os.sep in name or (os.altsep and os.altsep in name):
        raise ValueError("a key name must be a plain file name, not %r" % (name,))
    os.makedirs(directory, exist_ok=True)
    public = os.path.join(directory, name + ".key")
    secret = os.path.join(directory, name + ".key_secret")
    for path in (public, secret):
        if os.path.exists(path):
            raise FileExistsError("%s exists; remove it first to make a new key" % path)
    public, secret = zmq.auth.create_certificates(directory, name)
    os.chmod(secret, 0o600)
    return public, secret
