"""Identity instances, the key pair and the pin store (INTERFACE §6.1), on real files."""

from __future__ import annotations

import hashlib
import json
import ssl
import stat
from functools import partial
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from flashback.daemon.identity import (
    IDENTITIES_DIR,
    Identity,
    IdentityStore,
    claim_instance,
    instance_base,
)
from flashback.daemon.keys import KEY_FILE
from flashback.daemon.pins import FingerprintMismatch, PinStore, PinStoreError
from flashback.errors import ConfigError, Forbidden
from flashback.protocol.fingerprint import fingerprint_of, grouped, is_fingerprint

FP_A = "sha256:" + "aa" * 32
FP_B = "sha256:" + "bb" * 32


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- instances -----------------------------------------------------------------------


def test_first_start_makes_a_private_key_and_a_restart_keeps_it(tmp_path: Path) -> None:
    with claim_instance(tmp_path, "alice") as first:
        fingerprint = first.fingerprint
        assert first.name == "alice"
        assert first.directory == tmp_path / IDENTITIES_DIR / "alice"
        pem = first.directory / KEY_FILE
        assert mode(pem) == 0o600 and mode(first.directory) == 0o700
        assert mode(first.directory.parent) == 0o700
        certificate = x509.load_pem_x509_certificate(pem.read_bytes())
        der = certificate.public_bytes(serialization.Encoding.DER)
        assert fingerprint == "sha256:" + hashlib.sha256(der).hexdigest()
        assert is_fingerprint(fingerprint)
        first.identity_store("http://t:1").save(Identity("p-alice", "tok"))
    with claim_instance(tmp_path, "alice") as again:
        assert again.fingerprint == fingerprint
        assert again.identity_store("http://t:1").load() == Identity("p-alice", "tok")


def test_a_running_instance_is_never_shared(tmp_path: Path) -> None:
    with claim_instance(tmp_path, "twin") as one, claim_instance(tmp_path, "twin") as two:
        assert (one.name, two.name) == ("twin", "twin-2")
        assert one.fingerprint != two.fingerprint
        with pytest.raises(ConfigError, match="'twin' is in use"):
            claim_instance(tmp_path, "whatever", explicit="twin")
    # released: the explicit one is free again, and keeps its key
    with claim_instance(tmp_path, "x", explicit="twin-2") as named:
        assert named.name == "twin-2"


def test_the_lock_is_held_against_another_process(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys; from pathlib import Path; from flashback.daemon.identity import "
        "claim_instance; from flashback.errors import ConfigError\n"
        "try:\n claim_instance(Path(sys.argv[1]), 'n', explicit='solo')\n"
        "except ConfigError as e:\n print(e.message); sys.exit(2)\n"
    )
    with claim_instance(tmp_path, "n", explicit="solo"):
        held = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True)
        assert held.returncode == 2 and b"in use" in held.stdout
    free = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True)
    assert free.returncode == 0, free.stderr


@pytest.mark.parametrize("bad", ["", "../x", "a/b", ".hidden", "-x", "x" * 65, "a b", "é"])
def test_bad_identity_names_are_config_errors(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError, match="identity name"):
        claim_instance(tmp_path, "n", explicit=bad)
    # nothing made outside the identities directory
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], [IDENTITIES_DIR])


def test_any_daemon_name_maps_to_a_safe_directory() -> None:
    assert instance_base("alice") == "alice"
    assert instance_base("../../etc") == "etc"
    assert instance_base("my laptop\u202e") == "my-laptop-"
    assert instance_base("...") == "default"
    assert len(instance_base("x" * 64)) == 60


def test_an_old_identity_json_moves_into_the_first_instance(tmp_path: Path) -> None:
    legacy = IdentityStore(tmp_path, "http://t:1")
    legacy.save(Identity("p-old", "t-old"))
    with (
        claim_instance(tmp_path, "alice") as first,
        claim_instance(tmp_path, "alice") as second,
    ):
        assert first.identity_store("http://t:1").load() == Identity("p-old", "t-old")
        # moved, not copied: the second daemon must not take the same peer id
        assert second.identity_store("http://t:1").load() is None
        assert not (tmp_path / "identity.json").exists()
        assert mode(first.directory / "identity.json") == 0o600
    with claim_instance(tmp_path, "alice") as again:
        assert again.identity_store("http://t:1").load() == Identity("p-old", "t-old")


def test_a_damaged_key_is_refused_not_replaced(tmp_path: Path) -> None:
    with claim_instance(tmp_path, "a") as instance:
        pem = instance.directory / KEY_FILE
    pem.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnope\n")
    with pytest.raises(ConfigError, match="damaged"):
        claim_instance(tmp_path, "a")
    assert pem.read_bytes().endswith(b"nope\n")  # left for the user to look at
    # ...and the failed claim released its lock
    pem.unlink()
    with claim_instance(tmp_path, "a", explicit="a") as fresh:
        assert is_fingerprint(fresh.fingerprint)


def test_identity_file_is_mode_0600(tmp_path: Path) -> None:
    with claim_instance(tmp_path, "a") as instance:
        store = instance.identity_store("http://t:1")
        store.save(Identity("p", "secret"))
        assert mode(store.path) == 0o600
        assert json.loads(store.path.read_text())["trackers"]["http://t:1"]["peer_id"] == "p"


# -- the key works for TLS 1.3 at both ends --------------------------------------------


async def test_the_key_serves_tls13_and_the_client_sees_the_fingerprint(tmp_path: Path) -> None:
    with claim_instance(tmp_path, "owner") as instance:
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.minimum_version = ssl.TLSVersion.TLSv1_3
        server.load_cert_chain(instance.keys.path)
        server.set_alpn_protocols(["flashback/1"])
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.minimum_version = ssl.TLSVersion.TLSv1_3
        client.check_hostname = False
        client.verify_mode = ssl.CERT_NONE  # trust comes from the pinned fingerprint
        client.set_alpn_protocols(["flashback/1"])

        async def echo(stream: trio.SocketStream) -> None:
            tls = trio.SSLStream(stream, server, server_side=True)
            await tls.send_all(await tls.receive_some(64))
            await tls.aclose()

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                listeners = await nursery.start(partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
                port = listeners[0].socket.getsockname()[1]
                tls = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", port), client)
                await tls.do_handshake()
                assert tls.version() == "TLSv1.3"
                assert tls.selected_alpn_protocol() == "flashback/1"
                peer_der = tls.getpeercert(binary_form=True)
                assert peer_der is not None
                assert fingerprint_of(peer_der) == instance.fingerprint
                await tls.send_all(b"ping")
                assert await tls.receive_some(64) == b"ping"
                await tls.aclose()
                nursery.cancel_scope.cancel()


def test_grouped_fingerprint_for_reading_aloud() -> None:
    assert grouped("sha256:" + "0123456789abcdef" * 4).split() == ["01234567", "89abcdef"] * 4


# -- pins ------------------------------------------------------------------------------


def test_first_use_is_stored_then_the_same_key_passes(tmp_path: Path) -> None:
    pins = PinStore(tmp_path)
    assert pins.get("p1") is None
    pin = pins.check("p1", FP_A, name="bob")
    assert (pin.peer_id, pin.fingerprint, pin.name) == ("p1", FP_A, "bob")
    assert PinStore(tmp_path).get("p1") == pin  # on disk, not in memory
    assert mode(tmp_path / "pins.json") == 0o600
    assert pins.check("p1", FP_A) == pin


def test_a_different_fingerprint_is_refused_naming_both(tmp_path: Path) -> None:
    pins = PinStore(tmp_path)
    pins.check("p1", FP_A, name="bob")
    with pytest.raises(FingerprintMismatch) as caught:
        pins.check("p1", FP_B, name="bob")
    error = caught.value
    assert error.code == "fingerprint_mismatch" and error.status == 403
    assert FP_A in error.message and FP_B in error.message
    assert "flashback forget p1" in error.message
    assert pins.get("p1").fingerprint == FP_A  # type: ignore[union-attr]  # pin unchanged
    with pytest.raises(FingerprintMismatch):  # and stays refused
        pins.check("p1", FP_B)


def test_forget_removes_by_id_or_name_then_the_next_key_is_trusted(tmp_path: Path) -> None:
    pins = PinStore(tmp_path)
    pins.check("p1", FP_A, name="bob")
    pins.check("p2", FP_B, name="carol")
    assert pins.forget("nobody") == []
    assert [p.peer_id for p in pins.forget("p1")] == ["p1"]
    assert pins.get("p1") is None and pins.get("p2") is not None
    assert pins.check("p1", FP_B).fingerprint == FP_B  # trust on first use again
    assert [p.peer_id for p in pins.forget("carol")] == ["p2"]
    assert [p.peer_id for p in pins.pins()] == ["p1"]


def test_a_damaged_pin_store_refuses_instead_of_trusting(tmp_path: Path) -> None:
    (tmp_path / "pins.json").write_text('{"pins": {"p1": {"fingerprint": "md5:x"}}}')
    pins = PinStore(tmp_path)
    with pytest.raises(PinStoreError):
        pins.check("p1", FP_B)
    with pytest.raises(PinStoreError):
        pins.forget("p1")
    assert "md5:x" in (tmp_path / "pins.json").read_text()  # left as it was


def test_a_non_fingerprint_is_never_pinned(tmp_path: Path) -> None:
    pins = PinStore(tmp_path)
    with pytest.raises(Forbidden) as caught:
        pins.check("p1", "SHA256:nope")
    assert caught.value.code == "no_fingerprint"
    assert pins.get("p1") is None


def test_instances_of_one_name_are_bounded(tmp_path: Path) -> None:
    from contextlib import ExitStack

    from flashback.daemon.identity import MAX_INSTANCES_PER_NAME

    with ExitStack() as held:
        names = [
            held.enter_context(claim_instance(tmp_path, "many")).name
            for _ in range(MAX_INSTANCES_PER_NAME)
        ]
        assert names == ["many"] + [f"many-{n}" for n in range(2, MAX_INSTANCES_PER_NAME + 1)]
        with pytest.raises(ConfigError, match="are in use"):
            claim_instance(tmp_path, "many")
    with claim_instance(tmp_path, "many") as again:  # all released
        assert again.name == "many"


def test_a_new_peer_id_under_a_pinned_name_is_refused_naming_both_until_forget(
    tmp_path: Path,
) -> None:
    """ssh's rule for the name typed: an impostor registered as "alice" (new id, own key)."""
    pins = PinStore(tmp_path)
    pins.check("p-alice", FP_A, name="alice")
    with pytest.raises(FingerprintMismatch) as caught:
        pins.check("p-impostor", FP_B, name="alice")
    error = caught.value
    assert error.code == "fingerprint_mismatch"
    assert FP_A in error.message and FP_B in error.message
    assert "flashback forget alice" in error.message
    assert pins.get("p-impostor") is None  # not pinned
    # the same key under a new id is the same peer (it registered afresh)
    assert pins.check("p-alice-2", FP_A, name="alice").fingerprint == FP_A
    assert pins.check("p-bob", FP_B, name="bob").fingerprint == FP_B  # other names: unaffected
    assert {p.peer_id for p in pins.forget("alice")} == {"p-alice", "p-alice-2"}
    assert pins.check("p-impostor", FP_B, name="alice").fingerprint == FP_B  # trusted anew
