"""A node's persistent Ed25519 identity.

The key file holds the libp2p protobuf encoding of the private key (the format
every libp2p implementation reads), written once with mode 0600 and reused on
every start so the peer id never changes. A key file that exists but cannot be
read or parsed is an error for the owner to resolve: replacing it silently
would give the node a new identity and orphan everything tied to the old one.
"""

from __future__ import annotations

import stat
from pathlib import Path

from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair, KeyType
from libp2p.crypto.serialization import deserialize_private_key
from libp2p.peer.id import ID

from poolai.mesh.durable import write_atomic
from poolai.mesh.errors import MeshError

MAX_KEY_FILE = 4096


class IdentityError(MeshError):
    """The identity file exists but is unusable."""


def load_or_create(path: Path) -> tuple[KeyPair, bool]:
    """The key pair stored at ``path``, creating it if absent. Returns (key pair, created)."""
    if path.exists():
        return load(path), False
    key_pair = create_new_key_pair()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_atomic(path, key_pair.private_key.serialize(), overwrite=False)
    except FileExistsError:  # another process created it first: there is one identity, theirs
        return load(path), False
    return key_pair, True


def load(path: Path) -> KeyPair:
    """Read an existing key file; raises IdentityError with the reason."""
    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            raise IdentityError(f"identity file {path} is not a regular file")
        if mode & 0o077:
            raise IdentityError(
                f"identity file {path} is readable by others (mode {oct(mode & 0o777)}); "
                f"run: chmod 600 {path}"
            )
        data = path.read_bytes()
    except OSError as exc:
        raise IdentityError(f"cannot read identity file {path}: {exc.strerror}") from None
    if not data or len(data) > MAX_KEY_FILE:
        raise IdentityError(f"identity file {path} is empty or too large; it is not a PoolAI key")
    try:
        private = deserialize_private_key(data)
    except Exception:
        raise IdentityError(
            f"identity file {path} is corrupt; restore it from a backup or move it away "
            "to start this node under a new identity"
        ) from None
    if private.get_type() != KeyType.Ed25519:
        raise IdentityError(f"identity file {path} holds a {private.get_type().name} key, not Ed25519")
    return KeyPair(private, private.get_public_key())


def peer_id_of(key_pair: KeyPair) -> str:
    return str(ID.from_pubkey(key_pair.public_key))
