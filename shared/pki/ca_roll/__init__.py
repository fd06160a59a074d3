"""The CA roll: move the fleet from the issuing CA in use to a new one (docs/ca-roll.md).

:class:`CaRoll` runs the steps of :mod:`shared.domain.ca_roll`, each idempotent and
resumable from the record it reads and writes (ETag-checked):

``prepare``  a new issuing key in the configured key store (a new label in the PKCS#11
             token, a new version of the Key Vault / Managed HSM key, or a development
             file) and its CSR (:func:`shared.pki.ceremony.build_issuing_csr`, signed in
             the key store).
``install``  the certificate the offline root signed for that CSR (``certroll pki
             sign-issuing``), checked against the key, the CSR and the root; or, where the
             root key is local (development, the demo), signed here by the same ceremony
             function.
``verify``   the new CA uploaded to DPS and IoT Hub and proven (verification code →
             :func:`shared.pki.ceremony.build_verification_certificate` signed by the new
             key in the key store → verify).
``trust``    every enrollment group that trusts the old CA gets the new one beside it
             (the slot not holding the old one: ``signingCertificates`` or
             ``caReferences``); the new CA's certificate and first CRL are published and
             the record makes it the active CA: the issuer signs under it from now on.
``reissue``  a campaign re-issues every device whose certificate the old CA signed
             (reason ``ca-roll``; ``compromise`` in compromise mode) through the
             :class:`~shared.domain.ca_roll.CampaignRunner`.
``retire``   once no device presents an old-CA certificate: the new CA alone in the
             groups (primary slot), the old CA's final CRL published, its entry kept in
             the record as ``retired``; in compromise mode the old CA is also revoked in
             a new root CRL (``revoked``).

:class:`RollingIssuer` is the issuer that knows the CAs of the record: it signs under the
active one, publishes one CRL per CA still in use (each listing only its own leaves, at
the CRL distribution point its leaves carry) and picks up a switch made by another
process within ``refresh_seconds``.

Modules: ``keys`` (issuing keys per backend), ``cas`` (the CA set from the record),
``issuer`` (:class:`RollingIssuer`, one CRL per CA), ``root`` (the root CRL, the local
root), ``base`` (the steps' dependencies, result and shared helpers), ``new_ca``
(``prepare``, ``install``, ``verify``), ``switch`` (``trust``, ``reissue``) and ``roll``
(:class:`CaRoll`, ``retire``).
"""

from __future__ import annotations

from shared.pki.ca_roll.base import CaRollDeps, RollResult
from shared.pki.ca_roll.cas import (
    DEFAULT_CA_NAME,
    ROLL_ACTOR,
    CaSet,
    PublishedCa,
    ca_names,
    load_ca_set,
    published_ca,
    roll_fingerprint,
)
from shared.pki.ca_roll.issuer import RollingIssuer
from shared.pki.ca_roll.keys import IssuingKeys
from shared.pki.ca_roll.roll import CaRoll
from shared.pki.ca_roll.root import ROOT_CRL_VALIDITY, LocalRoot, build_root_crl
from shared.pki.issuer import der_to_pem

__all__ = [
    "DEFAULT_CA_NAME",
    "ROLL_ACTOR",
    "ROOT_CRL_VALIDITY",
    "CaRoll",
    "CaRollDeps",
    "CaSet",
    "IssuingKeys",
    "LocalRoot",
    "PublishedCa",
    "RollResult",
    "RollingIssuer",
    "build_root_crl",
    "ca_names",
    "der_to_pem",
    "load_ca_set",
    "published_ca",
    "roll_fingerprint",
]
