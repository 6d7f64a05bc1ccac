"""Who may send: calling AE title and source address allow-lists, and TLS.

* Calling AE titles (``CDSFUSION_DICOM_ALLOWED_AE_TITLES``): an association from any other
  title is rejected with A-ASSOCIATE-RJ "calling AE title not recognized" (PS3.8 §9.3.4,
  result 1 rejected-permanent, source 1 service-user, reason 3). In embedded mode an empty
  list admits any caller (loopback only); in production the list is enforced, so an empty
  list admits nobody until the site names its senders. ``*`` admits any title explicitly.
* Source networks (``CDSFUSION_DICOM_ALLOWED_NETWORKS``, CIDRs): a connection from
  elsewhere is closed before any PDU is read. Empty admits any address.
* TLS (PS3.15 Annex B.1, the Basic TLS Secure Transport Connection Profile): with a
  certificate and key the DICOM port speaks TLS only; with a CA file as well, a client
  certificate signed by it is required (mutual authentication).
"""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass

from cds.core.errors import ConfigurationError
from cds.core.settings import Settings

ANY = "*"


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """The allow-lists of one SCP.

    Attributes:
        ae_titles: calling AE titles admitted; ``None`` admits any.
        networks: source networks admitted; empty admits any address.
    """

    ae_titles: frozenset[str] | None
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> AccessPolicy:
        """The policy the settings describe.

        Raises:
            ConfigurationError: production mode without an AE title allow-list, or a
                network that is not a CIDR.
        """
        titles = {t.strip() for t in settings.dicom_allowed_ae_titles if t.strip()}
        if not titles and not settings.embedded:
            raise ConfigurationError(
                "production mode: set CDSFUSION_DICOM_ALLOWED_AE_TITLES to the senders' AE "
                "titles ('*' admits any) or disable the SCP with CDSFUSION_DICOM_PORT=0"
            )
        if ANY in titles or not titles:
            ae_titles: frozenset[str] | None = None
        else:
            ae_titles = frozenset(titles)
        try:
            networks = tuple(
                ipaddress.ip_network(n, strict=False) for n in settings.dicom_allowed_networks
            )
        except ValueError as exc:
            raise ConfigurationError("CDSFUSION_DICOM_ALLOWED_NETWORKS: not a CIDR list") from exc
        return cls(ae_titles=ae_titles, networks=networks)

    def admits_address(self, address: str) -> bool:
        if not self.networks:
            return True
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.networks)

    def admits_ae_title(self, ae_title: str) -> bool:
        return self.ae_titles is None or ae_title.strip() in self.ae_titles


def server_tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of the DICOM port, or ``None`` when TLS is not configured.

    Raises:
        ConfigurationError: only one of certificate and key is set, or they cannot be read.
    """
    cert, key, ca = (
        settings.dicom_tls_cert_file,
        settings.dicom_tls_key_file,
        settings.dicom_tls_ca_file,
    )
    if cert is None and key is None:
        if ca is not None:
            raise ConfigurationError("CDSFUSION_DICOM_TLS_CA_FILE needs a certificate and key")
        return None
    if cert is None or key is None:
        raise ConfigurationError("DICOM TLS needs both CDSFUSION_DICOM_TLS_CERT_FILE and _KEY_FILE")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=cert, keyfile=key)
        if ca is not None:
            context.load_verify_locations(cafile=ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"DICOM TLS files unreadable: {type(exc).__name__}") from exc
    return context
