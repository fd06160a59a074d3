"""The issuer over the CAs in use: signs under the active CA, publishes one CRL per CA
(each listing only its own leaves) and picks up a switch another process made."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from shared.domain.errors import InvalidRequestError
from shared.pki.ca_roll.cas import ROLL_ACTOR, CaSet, PublishedCa, _pem
from shared.pki.issuer import Issuer

__all__ = ["RollingIssuer"]

logger = logging.getLogger(__name__)


class RollingIssuer(Issuer):
    """The issuer over a :class:`CaSet` (module docstring)."""

    def __init__(
        self,
        cas: CaSet,
        *args: Any,
        reload: Callable[[], CaSet] | None = None,
        watch: Callable[[], object] | None = None,
        refresh_seconds: float = 60.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(cas.active.authority, *args, **kwargs)
        self.cas = cas
        self._reload = reload
        self._watch = watch
        self._seen = watch() if watch is not None else None
        self._refresh_seconds = refresh_seconds
        self._checked = time.monotonic()
        self._switch_lock = threading.Lock()

    def use(self, cas: CaSet) -> None:
        """Issue under ``cas.active`` from now on; publish CRLs for all of ``cas``."""
        with self._switch_lock:
            self.cas = cas
            self.authority = cas.active.authority
            chain = cas.active.authority.chain or (cas.active.authority.certificate,)
            self._chain_pem = "".join(_pem(c) for c in chain)

    def refresh(self, *, force: bool = False) -> None:
        """Re-read the CA set (at most every ``refresh_seconds`` unless ``force``)."""
        if self._reload is None:
            return
        now = time.monotonic()
        if not force and now - self._checked < self._refresh_seconds:
            return
        self._checked = now
        if self._watch is not None:
            seen = self._watch()
            if seen == self._seen and not force:
                return
            self._seen = seen
        cas = self._reload()
        if cas.key_ids() != self.cas.key_ids():
            logger.info("issuing CA switched to %s", cas.active.authority.key_id)
            self.use(cas)

    def issue(self, *args: Any, **kwargs: Any) -> Any:
        self.refresh()
        return super().issue(*args, **kwargs)

    def build_crl(
        self,
        next_update_hours: int = 24,
        *,
        ca: PublishedCa | None = None,
        next_update: datetime | None = None,
    ) -> bytes:
        """The CRL of ``ca`` (default: the active CA), signed by its key. With more than
        one CA in use, each CRL lists only the certificates its own key signed."""
        if not 1 <= next_update_hours <= 24 * 31:
            raise ValueError("next_update_hours must be 1-744")
        chosen = ca or self.cas.active
        authority = chosen.authority
        only_own = bool(self.cas.others) or ca is not None
        now = self.clock.now()
        return self._signed_crl(
            authority,
            now,
            next_update or now + timedelta(hours=next_update_hours),
            lambda record: not only_own or record.issuer_key_id == authority.key_id,
        )

    def _publish(self, ca: PublishedCa, der: bytes) -> str:
        if self.crl_publisher is None:
            raise InvalidRequestError("crl_publisher_missing", "no CRL publisher is configured")
        url = self.crl_publisher.publish(ca.crl_name, der, "application/pkix-crl")
        chain = ca.authority.chain or (ca.authority.certificate,)
        self.crl_publisher.publish(
            ca.cert_name, "".join(_pem(c) for c in chain).encode("ascii"), "application/x-pem-file"
        )
        return url

    def publish_crl(self, next_update_hours: int = 24) -> str:
        """Publish the CRL (and certificate) of every CA in use; the active CA's CRL URL."""
        self.refresh()
        url = self._publish(self.cas.active, self.build_crl(next_update_hours))
        for other in self.cas.others:
            self._publish(other, self.build_crl(next_update_hours, ca=other))
        self._audit("crl_publish", "ok", "system:issuer", None, None, {"url": url})
        return url

    def publish_final_crl(self, ca: PublishedCa) -> str:
        """The retired CA's last CRL, valid until the CA itself expires."""
        until = ca.authority.certificate.not_valid_after_utc
        der = self.build_crl(ca=ca, next_update=max(until, self.clock.now() + timedelta(hours=1)))
        url = self._publish(ca, der)
        self._audit("crl_publish", "ok", ROLL_ACTOR, None, None, {"url": url, "final": True})
        return url
