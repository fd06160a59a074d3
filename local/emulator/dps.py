"""The emulated Device Provisioning Service, service side: implements
:class:`shared.ports.EnrollmentStore`."""

from __future__ import annotations

import base64
import binascii
import bisect
import contextlib
import copy
import re
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from local.emulator import limits
from local.emulator.core import Core, EnrollmentRecord
from local.emulator.store import StoredCert, json_copy, new_etag, parse_pem
from shared.domain.errors import (
    ConcurrencyError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
)
from shared.domain.model import (
    BulkItemError,
    CertificateSlot,
    EnrollmentGroup,
    IndividualEnrollment,
    Page,
    ProvisioningStatus,
    RegistrationState,
    bulk_items,
)
from shared.ports import EnrollmentStore

_REG_ID = re.compile(r"[A-Za-z0-9\-._:]{1,128}")
MAX_PAGE_SIZE = 1000


def check_registration_id(value: Any, what: str = "registration id") -> str:
    if not isinstance(value, str) or not _REG_ID.fullmatch(value):
        raise InvalidRequestError(
            "registration_id_invalid",
            f"{what} {value!r} must be 1-128 letters, digits, '-', '.', '_' or ':'",
        )
    return value


def _resolve_slot(
    given: CertificateSlot | None, stored: StoredCert | None, name: str
) -> StoredCert | None:
    """The certificate a PUT leaves in a slot (validates; changes nothing)."""
    if given is None:
        return None
    if not isinstance(given, CertificateSlot):
        raise InvalidRequestError("slot_invalid", f"{name} must be a CertificateSlot or None")
    if given.pem:
        return StoredCert(parse_pem(given.pem, name))
    if given.thumbprint_sha256:
        if stored is not None and stored.matches(given.thumbprint_sha256):
            return stored
        raise InvalidRequestError(
            "slot_invalid",
            f"{name} names thumbprint {given.thumbprint_sha256} but holds "
            f"{stored.sha256 if stored else 'nothing'}; send the certificate PEM to change it",
        )
    raise InvalidRequestError("slot_invalid", f"{name} has neither a PEM nor a thumbprint")


#: Enrollment fields the emulator models itself; every other field of a PUT body is the
#: operator's (``initialTwin``, ``capabilities``, ``allocationPolicy``, ``iotHubs``,
#: ``customAllocationDefinition``, ``optionalDeviceInformation``...): stored as sent and
#: returned, and replaced by the next PUT (CreateOrUpdate replaces the whole enrollment).
MODELLED_ENROLLMENT_FIELDS = frozenset(
    {
        "registrationId",
        "enrollmentGroupId",
        "deviceId",
        "attestation",
        "provisioningStatus",
        "reprovisionPolicy",
        "iotHubHostName",
        "etag",
        "registrationState",
        "createdDateTimeUtc",
        "lastUpdatedDateTimeUtc",
    }
)


def operator_fields(document: Any) -> dict[str, Any] | None:
    """The fields of an enrollment document the emulator keeps as sent (None: none)."""
    if not isinstance(document, dict):
        return None
    kept = {k: json_copy(v) for k, v in document.items() if k not in MODELLED_ENROLLMENT_FIELDS}
    return kept or None


def _page_size(page_size: int) -> int:
    if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
        raise InvalidRequestError("page_size_invalid", "page_size must be a positive integer")
    return min(page_size, MAX_PAGE_SIZE)


def _encode(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).decode()


def _decode(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (ValueError, binascii.Error) as exc:
        raise InvalidRequestError("continuation_invalid", "bad continuation token") from exc


def _view(rec: EnrollmentRecord) -> Any:
    """A copy of the stored enrollment with info-only slots (pem None), as DPS reads."""
    view = copy.copy(rec.view)
    view.primary = rec.primary.info_slot() if rec.primary else None
    view.secondary = rec.secondary.info_slot() if rec.secondary else None
    view.document = json_copy(view.document) if view.document else None
    return view


class EmulatedDps(EnrollmentStore):
    """DPS enrollments, enrollment groups and registration states."""

    def __init__(self, core: Core) -> None:
        self._core = core
        self._local = threading.local()  # .in_bulk: inside bulk_call on this thread

    def _service_op(self) -> None:
        if not getattr(self._local, "in_bulk", False):  # a bulk call is charged as a whole
            self._core.limiter.take(limits.DPS_SERVICE_OPS)

    @contextlib.contextmanager
    def bulk_call(self, items: int) -> Iterator[None]:
        """One bulk operation of ``items`` enrollments (also the REST front end's
        ``RunBulkOperation``): charged once as the limiter's ``dps_bulk_counts`` says (one
        operation, or one per enrollment); the writes inside are not charged again. Each
        item is written on its own, as the service reports each item's result."""
        with self._core.txn():
            self._core.limiter.take_bulk(limits.DPS_SERVICE_OPS, items)
        self._local.in_bulk = True
        try:
            yield
        finally:
            self._local.in_bulk = False

    # -- individual enrollments -------------------------------------------------------

    def get_individual(self, registration_id: str) -> IndividualEnrollment:
        return self._get(self._core.individuals, registration_id, "individual enrollment")

    def update_individuals_if_match(
        self, enrollments: Sequence[IndividualEnrollment]
    ) -> list[BulkItemError]:
        """One bulk operation: charged to the service-operation bucket once per call, or
        once per enrollment when the limiter's ``dps_bulk_counts`` is ``"item"`` (Microsoft
        does not document how DPS counts a bulk call; docs/emulator.md)."""
        items = bulk_items(enrollments)
        errors: list[BulkItemError] = []
        with self.bulk_call(len(items)):
            for enrollment in items:
                rid = enrollment.registration_id
                try:
                    self.put_individual(enrollment)
                except NotFoundError as exc:
                    errors.append(BulkItemError(rid, 404, str(exc)))
                except ConcurrencyError as exc:
                    errors.append(BulkItemError(rid, 412, str(exc)))
                except ConflictError as exc:
                    errors.append(BulkItemError(rid, 409, str(exc)))
                except InvalidRequestError as exc:
                    errors.append(BulkItemError(rid, 400, str(exc)))
        return errors

    def put_individual(self, enrollment: IndividualEnrollment) -> IndividualEnrollment:
        if not isinstance(enrollment, IndividualEnrollment):
            raise InvalidRequestError("enrollment_invalid", "expected an IndividualEnrollment")
        check_registration_id(enrollment.registration_id)
        if enrollment.device_id is not None:
            from local.emulator.hub import check_device_id

            check_device_id(enrollment.device_id)
        status = ProvisioningStatus(enrollment.provisioning_status)
        with self._core.txn():
            self._service_op()
            stored = self._core.individuals.get(enrollment.registration_id)
            self._check_etag(stored, enrollment.etag, f"enrollment {enrollment.registration_id}")
            primary = _resolve_slot(
                enrollment.primary, stored.primary if stored else None, "primary"
            )
            secondary = _resolve_slot(
                enrollment.secondary, stored.secondary if stored else None, "secondary"
            )
            if primary is None and secondary is None:
                raise InvalidRequestError(
                    "attestation_missing",
                    "an X.509 individual enrollment needs a primary or secondary certificate",
                )
            view = copy.copy(enrollment)
            view.device_id = enrollment.device_id or enrollment.registration_id
            view.iot_hub_host_name = self._core.hub_host
            return self._store(
                self._core.individuals,
                enrollment.registration_id,
                view,
                status,
                primary,
                secondary,
                stored,
            )

    def delete_individual(self, registration_id: str, etag: str | None = None) -> None:
        self._delete(self._core.individuals, registration_id, etag, "individual enrollment")

    def query_individual(
        self, page_size: int = 100, continuation: str | None = None
    ) -> Page[IndividualEnrollment]:
        return self._query(self._core.individuals, page_size, continuation)

    # -- groups -------------------------------------------------------------------------

    def get_group(self, group_id: str) -> EnrollmentGroup:
        return self._get(self._core.groups, group_id, "enrollment group")

    def put_group(self, group: EnrollmentGroup) -> EnrollmentGroup:
        if not isinstance(group, EnrollmentGroup):
            raise InvalidRequestError("enrollment_invalid", "expected an EnrollmentGroup")
        check_registration_id(group.group_id, "group id")
        status = ProvisioningStatus(group.provisioning_status)
        with self._core.txn():
            self._service_op()
            stored = self._core.groups.get(group.group_id)
            self._check_etag(stored, group.etag, f"group {group.group_id}")
            primary = _resolve_slot(group.primary, stored.primary if stored else None, "primary")
            secondary = _resolve_slot(
                group.secondary, stored.secondary if stored else None, "secondary"
            )
            refs = [r for r in (group.ca_primary, group.ca_secondary) if r is not None]
            for ref in refs:
                if self._core.verified_ca("dps", ref) is None:
                    raise InvalidRequestError(
                        "ca_reference_invalid", f"{ref} is not a verified CA certificate"
                    )
            if refs and (primary or secondary):
                raise InvalidRequestError(
                    "attestation_invalid",
                    "a group takes signingCertificates or caReferences, not both",
                )
            if not refs and primary is None and secondary is None:
                raise InvalidRequestError(
                    "attestation_missing",
                    "an X.509 group needs a signing certificate or a CA reference",
                )
            return self._store(
                self._core.groups,
                group.group_id,
                copy.copy(group),
                status,
                primary,
                secondary,
                stored,
            )

    def _store(
        self,
        table: dict[str, Any],
        key: str,
        view: Any,
        status: ProvisioningStatus,
        primary: Any,
        secondary: Any,
        stored: Any,
    ) -> Any:
        """Write an enrollment or group record under a new ETag (caller holds the lock)."""
        view.provisioning_status = status
        view.etag = new_etag()
        view.document = operator_fields(view.document)
        rec = EnrollmentRecord(
            view=view,
            primary=primary,
            secondary=secondary,
            created=stored.created if stored else self._core.now(),
        )
        table[key] = rec
        return _view(rec)

    def delete_group(self, group_id: str, etag: str | None = None) -> None:
        self._delete(self._core.groups, group_id, etag, "enrollment group")

    def query_groups(
        self, page_size: int = 100, continuation: str | None = None
    ) -> Page[EnrollmentGroup]:
        return self._query(self._core.groups, page_size, continuation)

    # -- registration states ------------------------------------------------------------

    def get_registration_state(self, registration_id: str) -> RegistrationState:
        with self._core.txn():
            self._service_op()
            state = self._core.registrations.get(registration_id)
            if state is None:
                raise NotFoundError(f"no registration state for {registration_id} (404)")
            return copy.copy(state)  # type: ignore[no-any-return]

    def delete_registration_state(self, registration_id: str, etag: str | None = None) -> None:
        with self._core.txn():
            self._service_op()
            state = self._core.registrations.get(registration_id)
            if state is None:
                raise NotFoundError(f"no registration state for {registration_id} (404)")
            if etag not in (None, "*") and etag != state.etag:
                raise ConcurrencyError(f"registration state of {registration_id} changed (412)")
            del self._core.registrations[registration_id]
            self._core.registration_sources.pop(registration_id, None)

    def query_registrations(
        self, group_id: str, page_size: int = 100, continuation: str | None = None
    ) -> Page[RegistrationState]:
        """Registration states of the devices an enrollment group admitted
        (``DeviceRegistrationState_Query``), in registration id order, paged."""
        size = _page_size(page_size)
        after = None if continuation is None else _decode(continuation)
        with self._core.txn():
            self._service_op()
            if group_id not in self._core.groups:
                raise NotFoundError(f"no enrollment group {group_id} (404)")
            source = f"group:{group_id}"
            keys = sorted(
                rid
                for rid, src in self._core.registration_sources.items()
                if src == source and rid in self._core.registrations
            )
            start = 0 if after is None else bisect.bisect_right(keys, after)
            chosen = keys[start : start + size]
            items = [copy.copy(self._core.registrations[k]) for k in chosen]
            more = start + size < len(keys)
            return Page(items=items, continuation=_encode(chosen[-1]) if more else None)

    # -- helpers --------------------------------------------------------------------------

    def _get(self, table: dict[str, EnrollmentRecord], key: str, what: str) -> Any:
        with self._core.txn():
            self._service_op()
            rec = table.get(key)
            if rec is None:
                raise NotFoundError(f"no {what} {key} (404)")
            return _view(rec)

    def _delete(
        self, table: dict[str, EnrollmentRecord], key: str, etag: str | None, what: str
    ) -> None:
        with self._core.txn():
            self._service_op()
            rec = table.get(key)
            if rec is None:
                raise NotFoundError(f"no {what} {key} (404)")
            if etag not in (None, "*") and etag != rec.view.etag:
                raise ConcurrencyError(f"{what} {key} changed (412)")
            del table[key]

    @staticmethod
    def _check_etag(stored: EnrollmentRecord | None, etag: str | None, what: str) -> None:
        if etag is None:
            if stored is not None:
                raise ConflictError(f"{what} already exists; read it and PUT with its etag")
        elif stored is None:
            raise NotFoundError(f"{what} does not exist; create it without an etag")
        elif etag != "*" and etag != stored.view.etag:
            raise ConcurrencyError(f"{what} changed since it was read (412)")

    def _query(
        self, table: dict[str, EnrollmentRecord], page_size: int, continuation: str | None
    ) -> Page[Any]:
        size = _page_size(page_size)
        after = None if continuation is None else _decode(continuation)
        with self._core.txn():
            self._service_op()
            keys = sorted(table)
            start = 0 if after is None else bisect.bisect_right(keys, after)
            chosen = keys[start : start + size]
            items = [_view(table[k]) for k in chosen]
            more = start + size < len(keys)
            return Page(items=items, continuation=_encode(chosen[-1]) if more else None)
