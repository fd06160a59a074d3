"""Settings from environment variables, with the names the Function App uses.

Locally every value has a default that points at Azurite's well-known development
account and at ``CERTROLL_HOME`` (default ``./.certroll``) for PKI material. The same
names appear in ``local.settings.json.example`` and in ``infra/`` (tests check that).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

# Azurite's published development account (not a secret: documented by Microsoft).
AZURITE_CONNECTION_STRING = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
    "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
    "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"
    "QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;"
    "TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;"
)

#: Every setting name certroll reads, with its local default ("" = no default).
SETTING_DEFAULTS: dict[str, str] = {
    "CERTROLL_HOME": ".certroll",
    # Storage: a connection string locally; in Azure the identity-based form
    # CERTROLL_STORAGE__tableServiceUri / __queueServiceUri / __blobServiceUri (+ __credential).
    "CERTROLL_STORAGE": AZURITE_CONNECTION_STRING,
    "CERTROLL_TABLE_PREFIX": "certroll",
    "CERTROLL_WORK_QUEUE": "certroll-rotation",
    "CERTROLL_PKI_CONTAINER": "pki",
    "CERTROLL_CRL_BASE_URL": "",  # public base URL of the PKI container; derived when empty
    # Issuing key
    # keyvault | pkcs11 | file; empty: what `certroll pki init` recorded under
    # $CERTROLL_HOME/pki, else file
    "CERTROLL_KEY_BACKEND": "",
    "CERTROLL_KEYVAULT_KEY_ID": "",  # https://<vault>.vault.azure.net/keys/<name>/<version>
    "CERTROLL_ISSUING_CERT": "",  # PEM path or blob name; default: $CERTROLL_HOME/pki/issuing.pem
    "CERTROLL_PKCS11_MODULE": "",
    "CERTROLL_PKCS11_TOKEN": "certroll",
    "CERTROLL_PKCS11_PIN": "",
    "CERTROLL_PKCS11_KEY_LABEL": "certroll-issuing",
    "CERTROLL_FILE_KEY_PASSWORD": "",
    # Fleet services
    "CERTROLL_DPS_ENDPOINT": "",  # https://<dps>.azure-devices-provisioning.net
    "CERTROLL_IOTHUB_HOST": "",  # <hub>.azure-devices.net
    "CERTROLL_EVENTGRID_TOPIC_ENDPOINT": "",
    # Triggers
    "CERTROLL_SWEEP_SCHEDULE": "0 0 3 * * *",
    "CERTROLL_TWIN_EVENTHUB": "twin-changes",
    "CERTROLL_CONNECTIONS_EVENTHUB": "connection-logs",
    # the consumer group infra creates on both hubs (infra/modules/eventhubs.bicep)
    "CERTROLL_EVENTHUB_CONSUMER_GROUP": "certroll",
    # Policy
    "CERTROLL_CERT_VALIDITY_DAYS": "30",
    "CERTROLL_RENEWAL_FRACTION": "0.6667",
    "CERTROLL_RENEWAL_JITTER": "0.05",
    "CERTROLL_BACKDATE_SECONDS": "300",
    # a CSR reaches certroll as one twin string value, and IoT Hub limits those to 4 KB
    "CERTROLL_CSR_MAX_BYTES": "4096",
    "CERTROLL_ROTATION_DEADLINE_HOURS": "24",
    "CERTROLL_CA_WARNING_DAYS": "90",
    # campaigns: the configuration the budget planner paces them for (docs/performance.md)
    "CERTROLL_HUB_TIER": "S1",  # the hub's SKU (F1, S1-S3, B1-B3): jobs at once, campaign pace
    "CERTROLL_HUB_UNITS": "1",
    "CERTROLL_DPS_INSTANCES": "1",
    "CERTROLL_CAMPAIGN_HEADROOM": "0.1",
    # API
    "CERTROLL_OPERATOR_ROLE": "Certroll.Operator",
    # Operator API authentication: Entra ID access tokens (docs/api.md)
    "CERTROLL_AUTH_TENANT_ID": "",  # the tenant that issues operator tokens
    "CERTROLL_AUTH_AUDIENCES": "",  # comma-separated: api://<client id>,<client id>
    "CERTROLL_AUTH_METADATA_URL": "",  # OpenID configuration; empty: the tenant's Entra ID one
    "CERTROLL_PLATFORM_AUTH_ENFORCED": "false",  # true only where App Service Authentication runs
}


@dataclass(frozen=True)
class Settings:
    """A read-only view of the settings; build with :meth:`from_env`."""

    values: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        source = os.environ if env is None else env
        merged = dict(SETTING_DEFAULTS)
        for name in SETTING_DEFAULTS:
            if source.get(name):
                merged[name] = source[name]
        # identity-based connection settings (NAME__suffix) pass through unchanged
        for name, value in source.items():
            if name.startswith("CERTROLL_") and "__" in name:
                merged[name] = value
        return cls(merged)

    def get(self, name: str) -> str:
        if name not in self.values and name not in SETTING_DEFAULTS:
            raise KeyError(f"unknown setting {name}")
        return self.values.get(name, SETTING_DEFAULTS.get(name, ""))

    @property
    def home(self) -> Path:
        return Path(self.get("CERTROLL_HOME"))

    @property
    def pki_dir(self) -> Path:
        return self.home / "pki"

    def int(self, name: str) -> int:
        return int(self.get(name))

    def float(self, name: str) -> float:
        return float(self.get(name))

    def flag(self, name: str) -> bool:
        """A true/false setting (``true``, ``1``, ``yes``; any case); anything else is false."""
        return self.get(name).strip().lower() in ("true", "1", "yes")
