"""``certroll demo --ca-roll``: a fleet moved to a new issuing CA end to end.

Flow (:func:`run_ca_roll`), on the same local stack as the rotation demo:

1. Provision the fleet under the issuing CA of the demo PKI (individual enrollments and
   members of an enrollment group whose signing certificate is that CA).
2. Run the roll through the operator API (``POST /api/ca/roll/{step}`` with a bearer
   token of the stack's token issuer): ``prepare`` (a new key in SoftHSM2 or a file,
   its CSR), ``install`` (signed by the demo's root, as ``certroll pki sign-issuing``
   does offline), ``verify`` (proof of possession with the emulated DPS and hub),
   ``trust`` (the new CA in the group's secondary slot; certroll issues under it),
   ``reissue`` (every device on the work queue with reason ``ca-roll``).
3. The functions rotate every device (twin changes, work queue, lifecycle events, as in
   the rotation demo); ``retire`` follows once none is left on the old CA (a device
   that finished a rotation under the old CA meanwhile gets another ``reissue``).
4. Verify: every device runs on a new certificate that chains to the new CA, which
   chains to the root; the ledger records each as issued by the new key; the group
   holds only the new CA; DPS refuses the old certificates of group members; the new CA
   is verified in DPS and the hub; the old CA is retired with its final CRL published.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from local.device.simulator import FleetSimulator
from local.emulator import RegistrationError
from local.fleet import provision_fleet
from local.stack import LocalStack
from shared.clock import ManualClock
from shared.domain.ca_roll import CaStatus, RollState
from shared.domain.certs import sha256_thumbprint
from shared.domain.errors import CertrollError
from shared.domain.model import CertificateStatus
from shared.pki.local_ca import ROOT_CRL_NAME

ROLL_OPERATOR = "ca-operator@demo.local"
MAX_REISSUE_ROUNDS = 4
#: at most this many devices re-register through DPS in the checks (DPS admits 1,000
#: registrations per minute; the emulator enforces it on the demo's clock)
REGISTRATION_SAMPLE = 20


def run_ca_roll(
    stack: LocalStack,
    options: Any,
    clock: ManualClock,
    real_now: datetime,
    started: float,
    say: Callable[[str], None],
    *,
    rotate: Callable[..., int],
    drain: Callable[..., None],
    progress: Callable[[int, bool], Any],
    call_api: Callable[..., tuple[int, Any]],
    check: Callable[..., Any],
) -> dict[str, Any]:
    """Provision, roll, verify; returns the parts of a ``DemoResult``."""
    services = stack.services
    old_authority = services.authority
    root = old_authority.root or old_authority.chain[-1]

    say(
        f"provisioning {options.devices} devices under the issuing CA "
        f"{sha256_thumbprint(old_authority.certificate)[:16]} at {clock.now():%Y-%m-%d %H:%M} UTC"
    )
    sim = provision_fleet(
        stack,
        devices=options.devices,
        group_fraction=options.group_fraction,
        seed=options.seed,
        actor="system:demo",
        max_rounds=10 * options.rounds,
        drain=drain,
    )
    settle(stack, sim, clock, drain)
    initial = {d: a.chain for d, a in sim.agents.items()}
    before = [a.certificate.not_valid_after_utc for a in sim.agents.values()]
    before_at = clock.now()
    ids = sorted(sim.agents)

    assert stack.url is not None
    token = stack.operator_token(ROLL_OPERATOR)

    def step(name: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        status, answer = call_api(
            stack.url,
            "POST",
            f"/api/ca/roll/{name}",
            function_key=stack.function_key,
            token=token,
            body=body or {},
        )
        return status, answer

    def required(name: str, body: dict[str, Any] | None = None) -> Any:
        status, answer = step(name, body)
        if status != 200:
            raise CertrollError(f"POST /api/ca/roll/{name} answered {status}: {answer}")
        say(f"POST /api/ca/roll/{name}: {_describe(name, answer)}")
        return answer

    rotation_started = time.perf_counter()
    required("prepare", {"mode": options.ca_roll_mode})
    required("install")
    required("verify")
    # trust goes through the work queue, as a long step would in Azure: 202, then the
    # queue worker runs it
    status, answer = call_api(
        stack.url,
        "POST",
        "/api/ca/roll/trust",
        function_key=stack.function_key,
        token=token,
        body={},
        headers={"Prefer": "respond-async"},
    )
    if status != 202:
        raise CertrollError(f"POST /api/ca/roll/trust (respond-async) answered {status}: {answer}")
    stack.poll_queue_now()
    drain(stack, sim)
    status, answer = call_api(
        stack.url, "GET", "/api/ca/roll", function_key=stack.function_key, token=token
    )
    state = (answer or {}).get("roll", {}).get("state") if isinstance(answer, dict) else None
    if status != 200 or state != "trusted":
        raise CertrollError(f"the queued trust step did not run: GET /api/ca/roll {status} {state}")
    say("POST /api/ca/roll/trust (Prefer: respond-async): 202, run by the queue worker")
    required("reissue")
    bar = progress(len(ids), options.progress)
    rounds = 0
    retire: Any = None
    try:
        waiting = services.ca_roll.remaining()
        for _attempt in range(MAX_REISSUE_ROUNDS):
            rounds += rotate(stack, sim, waiting, options, bar)
            drain(stack, sim)
            status, answer = step("retire")
            if status == 200:
                say(f"POST /api/ca/roll/retire: {_describe('retire', answer)}")
                retire = answer
                break
            code = (answer or {}).get("error", {}).get("code") if isinstance(answer, dict) else None
            if status != 409 or code != "ca_roll_incomplete":
                raise CertrollError(f"POST /api/ca/roll/retire answered {status}: {answer}")
            waiting = services.ca_roll.remaining()
            say(f"retire refused: {len(waiting)} device(s) still on the old CA; reissue again")
            required("reissue")
    finally:
        bar.close()
    if retire is None:
        raise CertrollError("the old CA could not be retired: devices are left on it")
    rotation_seconds = time.perf_counter() - rotation_started
    say(f"CA roll finished after {rounds} rounds; clock at {clock.now():%Y-%m-%d %H:%M} UTC")

    checks, counts = verify_ca_roll(stack, sim, ids, initial, root, real_now, check)
    summary = {
        "devices": options.devices,
        "rolled": counts["rolled"],
        "failed": len(ids) - counts["rolled"],
        "ca_roll_mode": options.ca_roll_mode,
        "new_ca": counts["new_ca"],
        "certificates_issued": counts["certificates_issued"],
        "campaigns": counts["campaigns"],
        "duplicate_events": stack.totals.duplicates,
        "max_gap_seconds": round(
            max(sim.agents[d].timeline.gap_seconds(clock.now()) for d in ids), 3
        ),
        "elapsed_seconds": round(time.perf_counter() - started, 2),
    }
    return {
        "summary": summary,
        "checks": checks,
        "before": before,
        "before_at": before_at,
        "after": [sim.agents[d].certificate.not_valid_after_utc for d in ids],
        "rotation_seconds": rotation_seconds,
    }


def settle(
    stack: LocalStack,
    sim: FleetSimulator,
    clock: ManualClock,
    drain: Callable[..., None],
    horizon: timedelta = timedelta(hours=1),
) -> None:
    """Let the fleet finish what provisioning started (a device whose first twin report
    the hub throttled reports again later): move the clock to each device's next step,
    up to ``horizon``, until every device has reported its certificate."""
    until = clock.now() + horizon
    while True:
        due = sim.next_due()
        if due is None or due > until:
            return
        clock.advance(max((due - clock.now()).total_seconds(), 0.001))
        drain(stack, sim)


def _describe(step: str, answer: Any) -> str:
    roll = (answer or {}).get("roll", {})
    detail = (answer or {}).get("detail", {})
    shown = {k: v for k, v in detail.items() if k != "csr"}
    return f"state {roll.get('state')}, {shown}" if shown else f"state {roll.get('state')}"


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _valid_at(cert: x509.Certificate, at: datetime) -> bool:
    return cert.not_valid_before_utc <= at <= cert.not_valid_after_utc


def verify_ca_roll(
    stack: LocalStack,
    sim: FleetSimulator,
    ids: list[str],
    initial: dict[str, list[x509.Certificate]],
    root: x509.Certificate,
    real_now: datetime,
    check: Callable[..., Any],
) -> tuple[list[Any], dict[str, Any]]:
    """The end-of-run checks of the CA roll and the counts for the summary."""
    services = stack.services
    roll = services.ca_roll
    record = roll.status()
    at = max(real_now, datetime.now(UTC))
    checks: list[Any] = []
    old, new = record.old, record.new
    new_cert = x509.load_pem_x509_certificate((new.certificate_pem or "").encode())
    old_cert = x509.load_pem_x509_certificate((old.certificate_pem or "").encode())

    checks.append(check("the roll is complete (record idle)", record.state is RollState.IDLE))
    checks.append(
        check(
            "the new issuing CA chains to the root and is active",
            _issued_by(new_cert, root)
            and _valid_at(new_cert, at)
            and record.active_ca_id == new.ca_id
            and services.issuer.authority.certificate == new_cert,
            new.ca_id,
        )
    )
    not_new, bad_chain, bad_ledger = [], [], []
    issued = 0
    for device_id in ids:
        cert = sim.agents[device_id].certificate
        if cert.serial_number == initial[device_id][0].serial_number:
            not_new.append(device_id)
        if not (_issued_by(cert, new_cert) and _valid_at(cert, at)):
            bad_chain.append(device_id)
        records = services.ledger.list_for_device(device_id)
        issued += sum(1 for r in records if r.trigger != "provision")
        mine = [r for r in records if r.thumbprint_sha256 == sha256_thumbprint(cert)]
        if not (
            len(mine) == 1
            and mine[0].issuer_key_id == new.key_id
            and mine[0].status is CertificateStatus.ACTIVE
        ):
            bad_ledger.append(device_id)
    checks.append(check("every device is on a new certificate", not not_new, _some(not_new)))
    checks.append(
        check(
            "every device's certificate chains to the new CA and is valid now",
            not bad_chain,
            _some(bad_chain),
        )
    )
    checks.append(
        check(
            "the ledger records each device's certificate as issued by the new key, active",
            not bad_ledger,
            _some(bad_ledger),
        )
    )
    left = roll.remaining(record)
    checks.append(check("no device reports a certificate of the old CA", not left, _some(left)))

    group = stack.emulator.dps.get_group(sim.group_id)
    only_new = (
        group.primary is not None
        and group.primary.thumbprint_sha256 == sha256_thumbprint(new_cert)
        and group.secondary is None
    )
    checks.append(check("the enrollment group trusts only the new CA", only_new, sim.group_id))
    verified = all(
        svc.get(new.service_name).verified
        for svc in (stack.emulator.dps_certificates, stack.emulator.hub_certificates)
    )
    checks.append(
        check("the new CA is verified in DPS and IoT Hub (proof of possession)", verified)
    )

    rng = random.Random(7)
    members = sorted(sim.group_members)
    sample = rng.sample(members, min(REGISTRATION_SAMPLE, len(members)))
    refused = 0
    for device_id in sample:
        try:
            stack.emulator.register(device_id, initial[device_id])
        except RegistrationError:
            refused += 1
    checks.append(
        check(
            "DPS refuses the group members' old-CA certificates",
            bool(sample) and refused == len(sample),
            f"{refused} of {len(sample)} refused",
        )
    )
    admitted = 0
    for device_id in sample:
        try:
            stack.emulator.register(device_id, sim.agents[device_id].chain)
            admitted += 1
        except RegistrationError:
            pass
    checks.append(
        check(
            "DPS admits the group members' new certificates",
            admitted == len(sample),
            f"{admitted} of {len(sample)} admitted",
        )
    )

    expected_status = CaStatus.REVOKED if record.mode.value == "compromise" else CaStatus.RETIRED
    final_ok = False
    try:
        final = x509.load_der_x509_crl(services.crl_publisher.fetch(old.crl_name))
        final_ok = final.is_signature_valid(old_cert.public_key())  # type: ignore[arg-type]
        final_ok = final_ok and final.next_update_utc is not None
        final_ok = final_ok and final.next_update_utc >= old_cert.not_valid_after_utc - timedelta(
            seconds=1
        )
    except CertrollError:
        final_ok = False
    checks.append(
        check(
            f"the old CA is {expected_status.value}, its final CRL published, its certificate kept",
            old.status is expected_status and final_ok and bool(old.certificate_pem),
            old.ca_id,
        )
    )
    if record.mode.value == "compromise":
        listed = False
        try:
            root_crl = x509.load_der_x509_crl(services.crl_publisher.fetch(ROOT_CRL_NAME))
            listed = root_crl.is_signature_valid(
                root.public_key()  # type: ignore[arg-type]
            ) and (
                root_crl.get_revoked_certificate_by_serial_number(old_cert.serial_number)
                is not None
            )
        except CertrollError:
            listed = False
        checks.append(check("the root CRL revokes the old issuing CA", listed, ROOT_CRL_NAME))
    counts = {
        "rolled": len(ids) - len(set(not_new) | set(bad_chain) | set(bad_ledger)),
        "new_ca": new.ca_id,
        "certificates_issued": issued,
        "campaigns": len(record.campaign_ids),
    }
    return checks, counts


def _some(ids: list[str], limit: int = 5) -> str:
    if not ids:
        return ""
    more = f" (+{len(ids) - limit} more)" if len(ids) > limit else ""
    return ", ".join(ids[:limit]) + more
