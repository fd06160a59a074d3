"""Device Provisioning Service enrollments over the DPS service REST API (2021-10-01).

``DpsEnrollmentStore`` implements :class:`shared.ports.EnrollmentStore` with azure-core's
``PipelineClient`` (there is no stable Python SDK for the DPS service API; see
docs/fleet-adapters.md). Every failure is one of :mod:`shared.domain.errors`.
"""

from __future__ import annotations

import copy
import logging
from collections import OrderedDict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from azure.core.pipeline.transport import HttpTransport
from azure.core.rest import HttpResponse

from shared.adapters._azure_rest import (
    ServiceClient,
    json_body,
    path_id,
    quote_etag,
    raise_status_error,
    unquote_etag,
)
from shared.domain.errors import (
    InvalidRequestError,
    NotFoundError,
    ServiceError,
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
    bulk_status,
)
from shared.ports import EnrollmentStore

logger = logging.getLogger(__name__)

DPS_SCOPE = "https://azure-devices-provisioning.net/.default"
DPS_API_VERSION = "2021-10-01"
_INFO_CACHE_SIZE = 4096
#: Fields the service sets and a write does not send back (``readOnly`` in the 2021-10-01
#: spec's IndividualEnrollment / EnrollmentGroup definitions).
READ_ONLY_FIELDS = frozenset({"registrationState", "createdDateTimeUtc", "lastUpdatedDateTimeUtc"})


def kept_document(document: dict[str, Any] | None) -> dict[str, Any]:
    """The document as read, minus the read-only fields: the base of a replace.

    CreateOrUpdate replaces the whole enrollment (``initialTwin``, ``capabilities``,
    ``allocationPolicy``, ``iotHubs``, ``customAllocationDefinition``,
    ``optionalDeviceInformation``...), so a write starts from what was read and changes
    only what certroll owns: the certificate slots and the provisioning status.
    """
    body = copy.deepcopy(document) if isinstance(document, dict) else {}
    for name in READ_ONLY_FIELDS:
        body.pop(name, None)
    return body


def _x509_of(body: dict[str, Any]) -> dict[str, Any]:
    """``attestation.x509`` of a kept document, created when absent (other keys kept)."""
    attestation = body.get("attestation")
    if not isinstance(attestation, dict) or attestation.get("type") != "x509":
        attestation = {}
    x509 = attestation.get("x509")
    if not isinstance(x509, dict):
        x509 = {}
    attestation["type"] = "x509"
    attestation["x509"] = x509
    body["attestation"] = attestation
    return x509


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 timestamp from a service body as aware UTC (None when absent)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def raise_for_dps(response: HttpResponse, what: str) -> None:
    """Map a DPS error response to a typed error; returns quietly on 2xx."""
    status = response.status_code
    if 200 <= status < 300:
        return
    body = json_body(response)
    code = body.get("errorCode") if isinstance(body, dict) else None
    text = body.get("message") if isinstance(body, dict) else None
    message = (
        f"DPS {what}: HTTP {status}" + (f" {code}" if code else "") + (f" {text}" if text else "")
    )
    raise_status_error(response, message)


class DpsEnrollmentStore(EnrollmentStore):
    """DPS individual enrollments, enrollment groups and registration states.

    ``endpoint`` is the service endpoint, e.g. ``https://<dps>.azure-devices-provisioning.net``
    (plain ``http`` only to a loopback emulator). ``credential`` is a ``TokenCredential``
    (scope ``https://azure-devices-provisioning.net/.default``), an ``AzureSasCredential``
    holding a ``SharedAccessSignature`` or an ``AzureNamedKeyCredential`` (policy, key).
    """

    def __init__(
        self,
        endpoint: str,
        credential: Any,
        *,
        transport: HttpTransport[Any, Any] | None = None,
        api_version: str = DPS_API_VERSION,
        retry_total: int = 3,
    ) -> None:
        self._client = ServiceClient(
            endpoint, credential, DPS_SCOPE, transport=transport, retry_total=retry_total
        )
        self._api_version = api_version
        # certificate info by SHA-256 thumbprint, from reads: a slot kept on update is sent
        # back as the info DPS returned (the service never returns the certificate itself)
        self._infos: OrderedDict[str, dict[str, Any]] = OrderedDict()

    @property
    def endpoint(self) -> str:
        return self._client.base_url

    def close(self) -> None:
        self._client.close()

    # ------------------------------------------------------------------ plumbing

    def _call(
        self,
        method: str,
        path: str,
        what: str,
        *,
        json: Any = None,
        headers: dict[str, str] | None = None,
    ) -> HttpResponse:
        response = self._client.send(
            method, path, params={"api-version": self._api_version}, headers=headers, json=json
        )
        raise_for_dps(response, what)
        return response

    def _remember(self, info: Any) -> None:
        if isinstance(info, dict) and isinstance(info.get("sha256Thumbprint"), str):
            self._infos[info["sha256Thumbprint"].lower()] = info
            self._infos.move_to_end(info["sha256Thumbprint"].lower())
            while len(self._infos) > _INFO_CACHE_SIZE:
                self._infos.popitem(last=False)

    def _slot_from(self, raw: Any) -> CertificateSlot | None:
        if not isinstance(raw, dict):
            return None
        info = raw.get("info")
        if not isinstance(info, dict):
            return None
        self._remember(info)
        thumb = info.get("sha256Thumbprint")
        return CertificateSlot(
            thumbprint_sha256=thumb.lower() if isinstance(thumb, str) else None,
            not_after=parse_time(info.get("notAfterUtc")),
            subject=info.get("subjectName"),
            pem=None,
        )

    def _slot_to(self, slot: CertificateSlot, kind: str, name: str, reload: Any) -> dict[str, Any]:
        if slot.pem:
            return {"certificate": slot.pem}
        thumb = (slot.thumbprint_sha256 or "").lower()
        if not thumb:
            raise InvalidRequestError(
                "slot_empty", f"{kind} {name}: a slot needs a certificate PEM or a thumbprint"
            )
        if thumb not in self._infos:
            reload()  # a read fills the info cache
        info = self._infos.get(thumb)
        if info is None:
            raise InvalidRequestError(
                "slot_unknown",
                f"{kind} {name}: certificate {thumb} is not stored in DPS; give its PEM",
            )
        return {"info": info}

    def _certificates(
        self,
        primary: CertificateSlot | None,
        secondary: CertificateSlot | None,
        kind: str,
        name: str,
        reload: Any,
    ) -> dict[str, Any]:
        certs: dict[str, Any] = {}
        if primary is not None:
            certs["primary"] = self._slot_to(primary, kind, name, reload)
        if secondary is not None:
            certs["secondary"] = self._slot_to(secondary, kind, name, reload)
        return certs

    @staticmethod
    def _if_match(etag: str | None) -> dict[str, str]:
        return {"If-Match": quote_etag(etag)} if etag else {}

    def _reload_quietly(self, getter: Any, name: str) -> Any:
        def reload() -> None:
            try:
                getter(name)
            except NotFoundError:
                pass

        return reload

    # ------------------------------------------------------------------ individual

    def _individual_from(self, body: Any) -> IndividualEnrollment:
        if not isinstance(body, dict) or not isinstance(body.get("registrationId"), str):
            raise ServiceError("DPS returned an enrollment without registrationId")
        x509 = (body.get("attestation") or {}).get("x509") or {}
        certs = x509.get("clientCertificates") or {}
        policy = body.get("reprovisionPolicy") or {}
        return IndividualEnrollment(
            registration_id=body["registrationId"],
            device_id=body.get("deviceId"),
            primary=self._slot_from(certs.get("primary")),
            secondary=self._slot_from(certs.get("secondary")),
            provisioning_status=ProvisioningStatus(body.get("provisioningStatus", "enabled")),
            reprovision_migrate_data=bool(policy.get("migrateDeviceData", True)),
            reprovision_update_hub_assignment=bool(policy.get("updateHubAssignment", True)),
            iot_hub_host_name=body.get("iotHubHostName"),
            etag=body.get("etag"),
            document=body,
        )

    def get_individual(self, registration_id: str) -> IndividualEnrollment:
        path = f"/enrollments/{path_id(registration_id)}"
        response = self._call("GET", path, f"get enrollment {registration_id}")
        return self._individual_from(json_body(response))

    def _document_for(self, document: Any, etag: str | None, getter: Any, name: str) -> Any:
        """The document to keep: the one carried by the model, else (for a conditional
        write of a model built elsewhere) the current one when its ETag still matches."""
        if document is not None or not etag or etag == "*":
            return document
        try:
            current = getter(name)
        except NotFoundError:
            return None
        return current.document if current.etag == etag else None

    def put_individual(self, enrollment: IndividualEnrollment) -> IndividualEnrollment:
        rid = enrollment.registration_id
        path = f"/enrollments/{path_id(rid)}"
        body = self._individual_body(enrollment)
        response = self._call(
            "PUT", path, f"put enrollment {rid}", json=body, headers=self._if_match(enrollment.etag)
        )
        stored = self._individual_from(json_body(response))
        logger.info("DPS enrollment %s written (etag %s)", rid, stored.etag)
        return stored

    def update_individuals_if_match(
        self, enrollments: Sequence[IndividualEnrollment]
    ) -> list[BulkItemError]:
        """``POST /enrollments`` (IndividualEnrollment_RunBulkOperation) with mode
        ``updateIfMatchETag``: each item carries its ``etag`` in the body, as the
        ``IndividualEnrollment`` definition has it. The answer is a
        ``BulkEnrollmentOperationResult`` (``isSuccessful``, ``errors``: registrationId,
        errorCode, errorStatus)."""
        items = bulk_items(enrollments)
        body = {
            "mode": "updateIfMatchETag",
            "enrollments": [self._individual_body(e) for e in items],
        }
        response = self._call("POST", "/enrollments", f"bulk update of {len(items)}", json=body)
        result = json_body(response)
        if not isinstance(result, dict):
            raise ServiceError("DPS bulk operation returned no result")
        errors: list[BulkItemError] = []
        for raw in result.get("errors") or []:
            if not isinstance(raw, dict):
                continue
            code = raw.get("errorCode")
            errors.append(
                BulkItemError(
                    registration_id=str(raw.get("registrationId") or ""),
                    status=bulk_status(code) if isinstance(code, int) else 500,
                    message=str(raw.get("errorStatus") or ""),
                )
            )
        if not errors and result.get("isSuccessful") is False:
            raise ServiceError("DPS bulk operation failed without naming an enrollment")
        logger.info("DPS bulk update of %d enrollments: %d refused", len(items), len(errors))
        return errors

    def _individual_body(self, enrollment: IndividualEnrollment) -> dict[str, Any]:
        """The document a write of ``enrollment`` sends (PUT or one bulk item)."""
        rid = enrollment.registration_id
        body = kept_document(
            self._document_for(enrollment.document, enrollment.etag, self.get_individual, rid)
        )
        body["registrationId"] = rid
        x509 = _x509_of(body)
        for raw in (x509.get("clientCertificates") or {}).values():
            if isinstance(raw, dict):  # a kept slot goes back as the info read with it
                self._remember(raw.get("info"))
        x509["clientCertificates"] = self._certificates(
            enrollment.primary,
            enrollment.secondary,
            "enrollment",
            rid,
            self._reload_quietly(self.get_individual, rid),
        )
        body["provisioningStatus"] = enrollment.provisioning_status.value
        policy = body.get("reprovisionPolicy")
        body["reprovisionPolicy"] = {
            **(policy if isinstance(policy, dict) else {}),
            "updateHubAssignment": enrollment.reprovision_update_hub_assignment,
            "migrateDeviceData": enrollment.reprovision_migrate_data,
        }
        if enrollment.device_id:
            body["deviceId"] = enrollment.device_id
        if enrollment.iot_hub_host_name:
            body["iotHubHostName"] = enrollment.iot_hub_host_name
        if enrollment.etag:
            body["etag"] = enrollment.etag
        else:
            body.pop("etag", None)
        return body

    def delete_individual(self, registration_id: str, etag: str | None = None) -> None:
        path = f"/enrollments/{path_id(registration_id)}"
        self._call(
            "DELETE", path, f"delete enrollment {registration_id}", headers=self._if_match(etag)
        )
        logger.info("DPS enrollment %s deleted", registration_id)

    def query_individual(
        self, page_size: int = 100, continuation: str | None = None
    ) -> Page[IndividualEnrollment]:
        items, token = self._query("/enrollments/query", page_size, continuation, "enrollments")
        return Page([self._individual_from(item) for item in items], token)

    def _query(
        self, path: str, page_size: int, continuation: str | None, what: str
    ) -> tuple[list[Any], str | None]:
        if page_size < 1:
            raise InvalidRequestError("page_size", "page size must be at least 1")
        headers = {"x-ms-max-item-count": str(page_size)}
        if continuation:
            headers["x-ms-continuation"] = continuation
        response = self._call("POST", path, f"query {what}", json={"query": "*"}, headers=headers)
        body = json_body(response)
        if not isinstance(body, list):
            raise ServiceError(f"DPS query {what} returned no list")
        return body, response.headers.get("x-ms-continuation") or None

    # ------------------------------------------------------------------ groups

    def _group_from(self, body: Any) -> EnrollmentGroup:
        if not isinstance(body, dict) or not isinstance(body.get("enrollmentGroupId"), str):
            raise ServiceError("DPS returned an enrollment group without enrollmentGroupId")
        x509 = (body.get("attestation") or {}).get("x509") or {}
        certs = x509.get("signingCertificates") or {}
        refs = x509.get("caReferences") or {}
        policy = body.get("reprovisionPolicy") or {}
        return EnrollmentGroup(
            group_id=body["enrollmentGroupId"],
            primary=self._slot_from(certs.get("primary")),
            secondary=self._slot_from(certs.get("secondary")),
            ca_primary=refs.get("primary"),
            ca_secondary=refs.get("secondary"),
            provisioning_status=ProvisioningStatus(body.get("provisioningStatus", "enabled")),
            reprovision_migrate_data=bool(policy.get("migrateDeviceData", True)),
            reprovision_update_hub_assignment=bool(policy.get("updateHubAssignment", True)),
            etag=body.get("etag"),
            document=body,
        )

    def get_group(self, group_id: str) -> EnrollmentGroup:
        path = f"/enrollmentGroups/{path_id(group_id)}"
        response = self._call("GET", path, f"get enrollment group {group_id}")
        return self._group_from(json_body(response))

    def put_group(self, group: EnrollmentGroup) -> EnrollmentGroup:
        gid = group.group_id
        body = kept_document(self._document_for(group.document, group.etag, self.get_group, gid))
        x509 = _x509_of(body)
        x509.pop("signingCertificates", None)
        x509.pop("caReferences", None)
        if group.primary is not None or group.secondary is not None:
            x509["signingCertificates"] = self._certificates(
                group.primary,
                group.secondary,
                "enrollment group",
                gid,
                self._reload_quietly(self.get_group, gid),
            )
        refs = {
            k: v for k, v in (("primary", group.ca_primary), ("secondary", group.ca_secondary)) if v
        }
        if refs:
            x509["caReferences"] = refs
        body["enrollmentGroupId"] = gid
        body["provisioningStatus"] = group.provisioning_status.value
        policy = body.get("reprovisionPolicy")
        body["reprovisionPolicy"] = {
            **(policy if isinstance(policy, dict) else {}),
            "updateHubAssignment": group.reprovision_update_hub_assignment,
            "migrateDeviceData": group.reprovision_migrate_data,
        }
        if group.etag:
            body["etag"] = group.etag
        else:
            body.pop("etag", None)
        response = self._call(
            "PUT",
            f"/enrollmentGroups/{path_id(gid)}",
            f"put enrollment group {gid}",
            json=body,
            headers=self._if_match(group.etag),
        )
        stored = self._group_from(json_body(response))
        logger.info("DPS enrollment group %s written (etag %s)", gid, stored.etag)
        return stored

    def delete_group(self, group_id: str, etag: str | None = None) -> None:
        path = f"/enrollmentGroups/{path_id(group_id)}"
        self._call(
            "DELETE", path, f"delete enrollment group {group_id}", headers=self._if_match(etag)
        )
        logger.info("DPS enrollment group %s deleted", group_id)

    def query_groups(
        self, page_size: int = 100, continuation: str | None = None
    ) -> Page[EnrollmentGroup]:
        items, token = self._query(
            "/enrollmentGroups/query", page_size, continuation, "enrollment groups"
        )
        return Page([self._group_from(item) for item in items], token)

    # ------------------------------------------------------------------ registrations

    def get_registration_state(self, registration_id: str) -> RegistrationState:
        path = f"/registrations/{path_id(registration_id)}"
        response = self._call("GET", path, f"get registration {registration_id}")
        body = json_body(response)
        if not isinstance(body, dict):
            raise ServiceError("DPS returned an empty registration state")
        return RegistrationState(
            registration_id=body.get("registrationId", registration_id),
            status=body.get("status", "unassigned"),
            assigned_hub=body.get("assignedHub"),
            device_id=body.get("deviceId"),
            last_updated=parse_time(body.get("lastUpdatedDateTimeUtc")),
            error_code=body.get("errorCode"),
            error_message=body.get("errorMessage"),
            etag=body.get("etag") or unquote_etag(response.headers.get("ETag")),
        )

    def delete_registration_state(self, registration_id: str, etag: str | None = None) -> None:
        path = f"/registrations/{path_id(registration_id)}"
        self._call(
            "DELETE", path, f"delete registration {registration_id}", headers=self._if_match(etag)
        )
        logger.info("DPS registration state %s deleted", registration_id)
