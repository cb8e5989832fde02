"""The network's certificate authority and this machine's TLS certificate.

TLS in OneOS is optional: a one-machine OneOS (everything on loopback) needs
none.  A network that crosses machines turns it on with ``oneos tls init`` on
its first machine, which creates, under ``$ONEOS_HOME/tls/``:

=========  =====  ==========================================================
file       mode   what
=========  =====  ==========================================================
ca.pem     0644   the network's CA certificate: what every member trusts
ca.key     0600   the CA's private key: only on the machine that created it
cert.pem   0644   this machine's certificate, issued by the CA, naming this
                  machine's host names (DNS subjectAltNames) and addresses
                  (IP-address subjectAltNames)
key.pem    0600   this machine's private key
=========  =====  ==========================================================

Another machine gets ``ca.pem`` and a certificate of its own from
:func:`bundle` (on the CA's machine) and :func:`install` (on the new one),
which ``oneos tls issue`` / ``oneos tls install`` (and ``oneos invite`` /
``oneos join``) use.

A client checks a server against ``ca.pem`` only (never the system's
trust store), and checks that the certificate names the host it dialled:
a DNS name against the DNS subjectAltNames, an IP address against the
IP-address subjectAltNames (Twisted's ``optionsForClientTLS`` does both,
with service-identity).

Keys are ECDSA P-256, made by the ``cryptography`` package; the TLS itself
is Twisted's (pyOpenSSL).  Nothing here implements cryptography.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from oneos.errors import OneOSError

#: the directory under $ONEOS_HOME
TLS_DIR = "tls"
CA_CERT, CA_KEY, CERT, KEY = "ca.pem", "ca.key", "cert.pem", "key.pem"
#: the CA certificate's lifetime
CA_DAYS = 20 * 365
#: a machine certificate's lifetime; ``oneos tls init`` renews one that ends within RENEW_DAYS
LEAF_DAYS = 5 * 365
RENEW_DAYS = 30
#: the format of :func:`bundle`'s dict
BUNDLE_VERSION = 1
#: names every machine certificate carries, so a runtime listening on loopback verifies too
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")

_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")


class TLSError(OneOSError):
    """TLS files are missing, damaged, or cannot be made."""


class NoCertificate(TLSError):
    """This machine has no TLS certificate (or no CA certificate) where one is needed."""


class NoCAKey(TLSError):
    """A certificate was to be issued here, but this machine does not hold the network CA's key."""


class BadName(TLSError):
    """A name for a certificate is neither a DNS name nor an IP address."""


# --------------------------------------------------------------------------
# paths


def tls_dir(home: Path | str) -> Path:
    return Path(home) / TLS_DIR


def ca_path(home: Path | str) -> Path:
    return tls_dir(home) / CA_CERT


def ca_key_path(home: Path | str) -> Path:
    return tls_dir(home) / CA_KEY


def cert_path(home: Path | str) -> Path:
    return tls_dir(home) / CERT


def key_path(home: Path | str) -> Path:
    return tls_dir(home) / KEY


def default_home() -> Path:
    """``$ONEOS_HOME`` (``~/.oneos``)."""
    from oneos.config import oneos_home

    return oneos_home()


def has_certificate(home: Path | str) -> bool:
    """Whether *home* holds a machine certificate (a runtime there serves streams with TLS)."""
    return cert_path(home).exists()


# --------------------------------------------------------------------------
# names


def parse_name(name: str) -> x509.GeneralName:
    """*name* as a subjectAltName: an IP address (``[::1]`` brackets allowed) or a DNS name."""
    text = name.strip()
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        return x509.IPAddress(ipaddress.ip_address(bare))
    except ValueError:
        pass
    host = text.rstrip(".").lower()
    try:
        host = host.encode("idna").decode("ascii")
    except UnicodeError:
        raise BadName(f"{name!r} is neither a host name nor an IP address") from None
    labels = host.split(".")
    if not host or len(host) > 253 or not all(_DNS_LABEL.match(label) for label in labels):
        raise BadName(f"{name!r} is neither a host name nor an IP address")
    return x509.DNSName(host)


def _general_names(names: list[str] | tuple[str, ...]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for name in names:
        general = parse_name(name)
        if general not in out:
            out.append(general)
    if not out:
        raise BadName("a certificate needs at least one host name or address")
    return out


def _show(general: x509.GeneralName) -> str:
    return str(general.value)


def certificate_names(cert_pem: bytes) -> list[str]:
    """The DNS names and IP addresses a certificate (PEM) is valid for."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [_show(g) for g in san if isinstance(g, (x509.DNSName, x509.IPAddress))]


# --------------------------------------------------------------------------
# files


def _write(path: Path, data: bytes, mode: int, private_dir: bool = True) -> None:
    """Write *path* atomically with *mode* (the content never exists with looser permissions).

    *private_dir*: the directory is ``tls/``, made private (0700) too.
    """
    if private_dir:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.chmod(path.parent, 0o700)
        except OSError:
            pass
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise NoCertificate(
            f"no {what} in {path}: run 'oneos tls init' (on the network's first machine) or install one issued there"
        ) from None
    except OSError as e:
        raise TLSError(f"cannot read the {what} {path}: {e.strerror or e}") from None


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _load_cert(data: bytes, where: Path | str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise TLSError(f"{where} is not a PEM certificate (damaged?)") from None


def _load_key(data: bytes, where: Path | str) -> Any:
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise TLSError(f"{where} is not an unencrypted PEM private key (damaged?)") from None


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


# --------------------------------------------------------------------------
# the CA


def create_ca(home: Path | str) -> bool:
    """Create the network's CA in *home* unless there is one; True if it was created.

    Never regenerates: an existing ``ca.pem`` (this machine's CA, or one
    installed from another machine) is kept, so certificates issued before
    stay valid.
    """
    ca, key = ca_path(home), ca_key_path(home)
    if ca.exists():
        return False
    if key.exists():
        raise TLSError(
            f"{key} exists but {ca} does not: restore ca.pem (or remove ca.key to start a new CA, "
            "after which every machine needs a new certificate)"
        )
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "OneOS"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"OneOS network CA {secrets.token_hex(4)}"),
        ]
    )
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(private.public_key()), critical=False)
        .sign(private, hashes.SHA256())
    )
    _write(key, _pem_key(private), 0o600)  # the key first: a ca.pem without its key is a joined machine
    _write(ca, _pem_cert(cert), 0o644)
    return True


def issue(home: Path | str, names: list[str] | tuple[str, ...]) -> tuple[bytes, bytes]:
    """A new machine certificate for *names* signed by *home*'s CA: (cert PEM, key PEM).

    Raises :class:`NoCAKey` on a machine that only has the CA certificate.
    """
    general = _general_names(names)
    ca_file, ca_key_file = ca_path(home), ca_key_path(home)
    ca_data = _read(ca_file, "CA certificate")
    if not ca_key_file.exists():
        raise NoCAKey(
            f"this machine has the network's CA certificate ({ca_file}) but not its key: issue "
            "certificates on the machine where 'oneos tls init' created the CA"
        )
    ca_cert = _load_cert(ca_data, ca_file)
    ca_key = _load_key(_read(ca_key_file, "CA key"), ca_key_file)
    private = ec.generate_private_key(ec.SECP256R1())
    first = _show(general[0])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "OneOS"),
                    x509.NameAttribute(NameOID.COMMON_NAME, first[:64]),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(min(now + datetime.timedelta(days=LEAF_DAYS), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.SubjectAlternativeName(general), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(private.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return _pem_cert(cert), _pem_key(private)


def with_loopback(names: list[str] | tuple[str, ...]) -> list[str]:
    """*names* and the loopback names (a runtime that listens on loopback must verify too)."""
    return list(dict.fromkeys([*names, *LOOPBACK_NAMES]))


def issue_own(home: Path | str, names: list[str] | tuple[str, ...], loopback: bool = True) -> tuple[Path, Path]:
    """Issue this machine's certificate (cert.pem, key.pem 0600) for *names* (and loopback) with *home*'s CA."""
    cert_pem, key_pem = issue(home, with_loopback(names) if loopback else names)
    _write(key_path(home), key_pem, 0o600)
    _write(cert_path(home), cert_pem, 0o644)
    return cert_path(home), key_path(home)


def certificate_status(home: Path | str) -> tuple[list[str], datetime.datetime] | None:
    """(names, expiry) of this machine's certificate, None when there is none."""
    path = cert_path(home)
    if not path.exists():
        return None
    cert = _load_cert(_read(path, "TLS certificate"), path)
    return certificate_names(_pem_cert(cert)), cert.not_valid_after_utc


def needs_new_certificate(home: Path | str, names: list[str] | tuple[str, ...]) -> bool:
    """Whether this machine's certificate is missing, ends soon, or lacks one of *names*."""
    status = certificate_status(home)
    if status is None:
        return True
    have, expires = status
    if expires - _now() < datetime.timedelta(days=RENEW_DAYS):
        return True
    have_general = set(_general_names(have)) if have else set()
    return any(g not in have_general for g in _general_names(names))


# --------------------------------------------------------------------------
# handing a certificate to another machine


def bundle(home: Path | str, names: list[str] | tuple[str, ...], loopback: bool = True) -> dict[str, Any]:
    """What another machine needs to join a TLS network: the CA certificate and a new certificate for *names*.

    *names*: the other machine's host names and IP addresses as its peers
    dial them (the address its runtime advertises, above all); the loopback
    names are added unless *loopback* is false.  Returns a JSON-able dict
    ``{"v": 1, "ca": PEM, "cert": PEM, "key": PEM}``.  It holds a private
    key: hand it over like a password.  Never includes the CA's key.  Must
    run where the CA was created (:class:`NoCAKey` elsewhere).

    No *names*: only ``{"v": 1, "ca": PEM}``, for a machine that only runs
    ``oneos`` commands (it checks servers, serves nothing); any member can
    give that.
    """
    ca_pem = _read(ca_path(home), "CA certificate")
    if not names:
        return {"v": BUNDLE_VERSION, "ca": ca_pem.decode("ascii")}
    cert_pem, key_pem = issue(home, with_loopback(names) if loopback else names)
    return {
        "v": BUNDLE_VERSION,
        "ca": ca_pem.decode("ascii"),
        "cert": cert_pem.decode("ascii"),
        "key": key_pem.decode("ascii"),
    }


def install(home: Path | str, data: dict[str, Any], force: bool = False) -> list[str]:
    """Write a :func:`bundle` into *home*'s ``tls/``; returns the names its certificate is valid for.

    Checks that the certificate was issued by the bundle's CA and matches its
    key.  A different CA already here is refused unless *force* (its
    certificates would stop verifying); the same CA is kept as is.
    """
    if not isinstance(data, dict) or data.get("v") != BUNDLE_VERSION:
        raise TLSError("not a OneOS TLS bundle (or one of another version)")
    try:
        ca_pem = str(data["ca"]).encode("ascii")
        with_cert = "cert" in data or "key" in data
        cert_pem = str(data["cert"]).encode("ascii") if with_cert else b""
        key_pem = str(data["key"]).encode("ascii") if with_cert else b""
    except (KeyError, UnicodeEncodeError):
        raise TLSError("the TLS bundle is damaged (a part is missing)") from None
    ca = _load_cert(ca_pem, "the bundle's CA certificate")
    if not cert_pem:  # the CA certificate alone (a machine that runs only oneos commands)
        _check_ca_replacement(home, ca_pem, force)
        _write(ca_path(home), ca_pem, 0o644)
        return []
    cert = _load_cert(cert_pem, "the bundle's certificate")
    key = _load_key(key_pem, "the bundle's key")
    try:
        cert.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError):
        raise TLSError("the bundle's certificate was not issued by its CA") from None
    if cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        raise TLSError("the bundle's key does not belong to its certificate")
    _check_ca_replacement(home, ca_pem, force)
    existing = ca_path(home)
    if not existing.exists() or existing.read_bytes().strip() != ca_pem.strip():
        _write(existing, ca_pem, 0o644)
    _write(key_path(home), key_pem, 0o600)
    _write(cert_path(home), cert_pem, 0o644)
    return certificate_names(cert_pem)


def _check_ca_replacement(home: Path | str, ca_pem: bytes, force: bool) -> None:
    existing = ca_path(home)
    other = existing.exists() and existing.read_bytes().strip() != ca_pem.strip()
    if other and ca_key_path(home).exists():
        raise TLSError(
            f"this machine created its own network CA ({ca_key_path(home)}): refusing to replace it "
            "with another network's (move the tls directory away first)"
        )
    if other and not force:
        raise TLSError(
            f"{existing} holds another network's CA; installing this bundle needs force (certificates "
            "issued by the old CA then stop verifying here)"
        )


def save_bundle(path: Path | str, data: dict[str, Any]) -> None:
    """Write a bundle as JSON with mode 0600 (it holds a private key)."""
    _write(Path(path), (json.dumps(data, indent=1) + "\n").encode(), 0o600, private_dir=False)


def load_bundle(path: Path | str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise TLSError(f"no TLS bundle at {path}") from None
    except (OSError, ValueError) as e:
        raise TLSError(f"cannot read the TLS bundle {path}: {e}") from None
    if not isinstance(data, dict):
        raise TLSError(f"{path} is not a OneOS TLS bundle")
    return data


# --------------------------------------------------------------------------
# Twisted contexts


@dataclass(frozen=True)
class Trust:
    """Whom a TLS client believes: the network's CA certificate (from *source*)."""

    ca_pem: bytes
    source: str

    @classmethod
    def from_file(cls, path: Path | str) -> Trust:
        path = Path(path)
        data = _read(path, "CA certificate")
        _load_cert(data, path)  # a clear error for a damaged file, not an OpenSSL one later
        return cls(data, str(path))

    def client_creator(self, host: str) -> Any:
        """A Twisted client connection creator for *host* (a DNS name or an IP address, no brackets).

        Verifies the server's certificate chain against this CA only, and its
        name: a DNS *host* must be one of its DNS subjectAltNames, an IP
        address one of its IP-address subjectAltNames (Twisted's
        ``optionsForClientTLS`` uses service-identity's ``DNS_ID`` or
        ``IPAddress_ID`` by the form of *host*).
        """
        from twisted.internet import ssl

        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        root = ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(self.ca_pem)])
        return ssl.optionsForClientTLS(host, trustRoot=root)


def load_trust(home: Path | str) -> Trust:
    """*home*'s network CA (``tls/ca.pem``); :class:`NoCertificate` when there is none."""
    return Trust.from_file(ca_path(home))


def server_options(home: Path | str) -> Any:
    """A Twisted server context factory with this machine's certificate and key (``tls/cert.pem``, ``key.pem``)."""
    from twisted.internet import ssl

    cert_file, key_file = cert_path(home), key_path(home)
    if not cert_file.exists():
        raise NoCertificate(
            f"no TLS certificate in {cert_file}: run 'oneos tls init' (on the network's first "
            "machine) or install one issued there"
        )
    cert_data, key_data = _read(cert_file, "TLS certificate"), _read(key_file, "TLS key")
    cert = _load_cert(cert_data, cert_file)
    key = _load_key(key_data, key_file)
    if cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        raise TLSError(f"{key_file} is not the key of {cert_file}")
    if cert.not_valid_after_utc < _now():
        raise TLSError(
            f"the TLS certificate {cert_file} expired on {cert.not_valid_after_utc:%Y-%m-%d}: "
            "run 'oneos tls init' again (on the CA's machine) or install a new one"
        )
    # cryptography objects, which pyOpenSSL takes directly (its own X509/PKey types are deprecated);
    # Twisted's annotation still names only pyOpenSSL's X509
    return ssl.CertificateOptions(privateKey=key, certificate=cert)  # type: ignore[arg-type]


@dataclass
class MachineTLS:
    """A runtime's TLS: this machine's server context and the network's CA for its clients."""

    home: Path
    trust: Trust
    server: Any

    @classmethod
    def load(cls, home: Path | str) -> MachineTLS:
        return cls(Path(home), load_trust(home), server_options(home))

    def client_creator(self, host: str) -> Any:
        return self.trust.client_creator(host)


def describe_tls_failure(reason: Any, whose: str = "the peer's", trust_source: str = "") -> str | None:
    """A plain sentence for a failed TLS handshake (a Failure or an exception); None when it is no TLS failure.

    *whose* names the other side (``"the broker's"``); *trust_source* the CA file it was checked against.
    """
    from OpenSSL import SSL
    from service_identity import VerificationError

    error = getattr(reason, "value", reason)
    against = f" against {trust_source}" if trust_source else ""
    if isinstance(error, VerificationError):
        ids = [getattr(m, "mismatched_id", None) for m in getattr(error, "errors", ())]
        names = ", ".join(
            str(getattr(i, "ip", None) or getattr(i, "hostname", None) or i) for i in ids if i is not None
        )
        return f"{whose} certificate is not valid for {names or 'the address dialled'} (it names other hosts)"
    if isinstance(error, SSL.Error):
        details = error.args[0] if error.args and isinstance(error.args[0], list) else []
        reasons = [str(r[2]) for r in details if isinstance(r, tuple) and len(r) >= 3 and r[2]]
        text = "; ".join(reasons) or str(error) or "handshake failed"
        if "certificate" in text:
            return f"{whose} certificate did not verify{against} ({text})"
        return f"TLS handshake failed ({text}): does it speak TLS, with a certificate of this network?"
    return None
