"""End-to-end rotations per second through the dev host, beside a naive openssl loop.

``e2e_rotations_per_s_<n>``: the demo's rotation phase (``local/demo.py``) on the local
stack: from the timer firing to the last confirmation, every device renewed through the
real event paths (sweep, work queue, twin changes, Event Grid lifecycle events, DPS slot
writes, delivery, reprovision), certificates signed with the issuing key (SoftHSM2 when
installed), state, ledger and audit in Azurite. Devices renewed / wall-clock seconds.

``e2e_storage_calls_per_rotation_<n>_<kind>``: the same requests by table and operation
(``local/storage_kinds.py``: ``ledger_query``, ``state_point_read``, ``queue``, ...), so a
request added to the rotation path shows where it goes.

``naive_openssl_loop_certs_per_s``: per device ``openssl genrsa 2048``, ``openssl req
-new`` and ``openssl x509 -req`` with the issuing CA, each a subprocess, over ~30 devices
(what a shell script renewing certificates one by one does, without any enrollment or
delivery). The loop runs once before and once after the end-to-end runs, and the ratios
``e2e_vs_naive_openssl_ratio_<n>`` divide by the mean of the two, so a change in the
machine's speed during the section weighs on both sides alike (both rates are kept).

The 10,000-device run takes tens of minutes on two cores; it runs when
``CERTROLL_BENCH_E2E_10K=1`` is set and is left out otherwise (stated on stderr).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from bench.common import BenchRow
from local.demo import DemoOptions, DemoResult, run_demo
from local.stack import drop_run_storage, run_settings
from shared.pki.local_ca import generate_pki
from shared.settings import Settings

NAIVE_DEVICES = 30
TARGET_RATIO = 10.0


def naive_openssl_rate(devices: int = NAIVE_DEVICES) -> float:
    """Certificates per second of the per-device openssl loop (three subprocesses each)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("openssl is not installed")
    pki = generate_pki()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        ca_key, ca_cert = d / "ca.key", d / "ca.pem"
        ca_key.write_bytes(
            pki.issuing_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        ca_cert.write_bytes(pki.issuing_certificate.public_bytes(serialization.Encoding.PEM))
        started = time.perf_counter()
        for i in range(devices):
            key, csr, crt = d / f"{i}.key", d / f"{i}.csr", d / f"{i}.pem"
            for argv in (
                [openssl, "genrsa", "-out", str(key), "2048"],
                [
                    openssl,
                    "req",
                    "-new",
                    "-key",
                    str(key),
                    "-subj",
                    f"/CN=dev-{i:05d}",
                    "-out",
                    str(csr),
                ],
                [
                    openssl,
                    "x509",
                    "-req",
                    "-in",
                    str(csr),
                    "-CA",
                    str(ca_cert),
                    "-CAkey",
                    str(ca_key),
                    "-set_serial",
                    str(1000 + i),
                    "-days",
                    "30",
                    "-sha384",
                    "-out",
                    str(crt),
                ],
            ):
                subprocess.run(argv, check=True, capture_output=True)
        return devices / (time.perf_counter() - started)


def e2e_run(devices: int, home: Path) -> DemoResult:
    """One demo run of ``devices`` devices; its storage is dropped afterwards."""
    settings = Settings.from_env({"CERTROLL_HOME": str(home)})
    options = DemoOptions(devices=devices, progress=False)
    result = run_demo(settings, options)
    drop_run_storage(run_settings(settings, result.run_id))
    if not result.ok:
        failed = [c.name for c in result.checks if not c.ok]
        raise RuntimeError(f"the {devices}-device run failed its checks: {failed}")
    return result


def _cpu_rows(cpu: dict[str, float], renewed: int, label: str) -> list[BenchRow]:
    """CPU per rotation, and the rate those CPU costs allow at most on this machine's
    cores (everything on one machine: the functions, the emulated fleet, Azurite)."""
    what = {
        "python": "CPU per rotation in the Python process (functions, Azure SDK clients, "
        "emulated DPS and hub, simulated devices, signing)",
        "azurite": "CPU per rotation in Azurite (node)",
    }
    rows = [
        BenchRow(
            f"e2e_cpu_ms_per_rotation_{label}_{name}",
            1000 * cpu[name] / max(renewed, 1),
            "ms",
            description,
        )
        for name, description in what.items()
        if name in cpu
    ]
    total = sum(cpu.values())
    if "azurite" in cpu and total > 0:
        cores = os.cpu_count() or 1
        rows.append(
            BenchRow(
                f"e2e_cpu_bound_rotations_per_s_{label}",
                cores * renewed / total,
                "rotations/s",
                f"the most {cores} cores allow at that CPU cost per rotation (Python + Azurite)",
            )
        )
    return rows


def run() -> list[BenchRow]:
    before = naive_openssl_rate()
    rows: list[BenchRow] = []
    rates: dict[str, float] = {}  # rotations/s by fleet label
    sizes = [1000]
    if os.environ.get("CERTROLL_BENCH_E2E_10K") == "1":
        sizes.append(10_000)
    else:
        print(
            "   e2e 10k: skipped (set CERTROLL_BENCH_E2E_10K=1; takes tens of minutes)",
            file=sys.stderr,
        )
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"  # one PKI (and SoftHSM token) for every size in the process
        for n in sizes:
            result = e2e_run(n, home)
            renewed = int(result.summary["renewed"])
            rate = renewed / result.rotation_seconds
            label = f"{n // 1000}k"
            rates[label] = rate
            rows += [
                BenchRow(
                    f"e2e_rotations_per_s_{label}",
                    rate,
                    "rotations/s",
                    f"{n} devices (PKCS#11 key: {result.backend == 'pkcs11'}), sweep to last "
                    "confirmation through the dev host, Azurite storage",
                ),
                BenchRow(
                    f"e2e_max_gap_seconds_{label}",
                    float(result.summary["max_gap_seconds"]),
                    "s",
                    "the longest time a device wanted a hub connection and had none (demo "
                    "clock; deliberate offline time not counted)",
                ),
                BenchRow(
                    f"e2e_storage_calls_per_rotation_{label}",
                    result.rotation_storage_calls / max(renewed, 1),
                    "calls",
                    "Azurite requests per rotation (state, ledger, audit, queue, CRL)",
                ),
            ]
            rows += [
                BenchRow(
                    f"e2e_storage_calls_per_rotation_{label}_{kind}",
                    count / max(renewed, 1),
                    "calls",
                    f"Azurite requests per rotation: {kind.replace('_', ' ')}",
                )
                for kind, count in sorted(result.rotation_storage_calls_by_kind.items())
            ]
            rows += _cpu_rows(result.rotation_cpu_seconds, renewed, label)
    after = naive_openssl_rate()
    naive = (before + after) / 2
    rows += [
        BenchRow(
            f"e2e_vs_naive_openssl_ratio_{label}",
            rate / naive,
            "ratio",
            "end-to-end rotations/s / naive openssl loop certs/s",
            f">= {TARGET_RATIO:g}",
        )
        for label, rate in rates.items()
    ]
    naive_what = (
        "per device: openssl genrsa 2048 + req -new + x509 -req with the issuing CA "
        f"(subprocesses), {NAIVE_DEVICES} devices"
    )
    return [
        BenchRow(
            "naive_openssl_loop_certs_per_s",
            naive,
            "certs/s",
            f"{naive_what}; mean of the loop run before and after the end-to-end runs",
        ),
        BenchRow("naive_openssl_loop_certs_per_s_before", before, "certs/s", naive_what),
        BenchRow("naive_openssl_loop_certs_per_s_after", after, "certs/s", naive_what),
        *rows,
    ]
