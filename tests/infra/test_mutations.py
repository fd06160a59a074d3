"""Each check catches the fault it exists for: a deliberately broken copy of the
templates (one textual change) must make the checker report it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from shared.settings import SETTING_DEFAULTS
from tests.infra import bicep
from tests.infra.bicep import BindingNeeds, Infra

ALLOW_LIST = Path(__file__).with_name("allowed_api_versions.txt")
OWNER = "8e3af657-a8ff-443c-a75c-2fe8c4bcb635"
CONTRIBUTOR = "b24988ac-6180-42a0-ab88-20f7382dd24c"
CRYPTO_USER = "12338af0-0e69-4776-bea7-57ae8d297424"

Checker = Callable[[Infra], list[str]]


def mutate(texts: dict[str, str], path: str, old: str, new: str) -> Infra:
    assert old in texts[path], f"mutation target not found in {path}: {old!r}"
    return Infra.from_texts({**texts, path: texts[path].replace(old, new, 1)})


_TYPES = bicep.TypeLibrary.load()


def _resource_types(infra: Infra) -> list[str]:
    return bicep.check_resource_types(infra, _TYPES)


def _api_versions(infra: Infra) -> list[str]:
    return bicep.check_api_versions(infra, bicep.load_allowed_api_versions(ALLOW_LIST))


MUTATIONS: list[tuple[str, str, str, str, Checker, str]] = [
    # id, file, old, new, checker, expected fragment of a reported problem
    (
        "unterminated-string",
        "main.bicep",
        "targetScope = 'subscription'",
        "targetScope = 'subscription",
        bicep.check_syntax,
        "main.bicep:",
    ),
    (
        "missing-brace",
        "modules/roles.bicep",
        "resource metricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {",
        "resource metricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = ",
        bicep.check_syntax,
        "modules/roles.bicep:",
    ),
    (
        "invented-api-version",
        "modules/keyvault.bicep",
        "'Microsoft.KeyVault/vaults@2023-07-01'",
        "'Microsoft.KeyVault/vaults@2099-01-01'",
        _api_versions,
        "Microsoft.KeyVault/vaults@2099-01-01",
    ),
    (
        "list-keys-in-setting",
        "modules/functionapp.bicep",
        "value: appInsights.properties.ConnectionString",
        "value: storage.listKeys().keys[0].value",
        bicep.check_no_secrets,
        "listKeys(",
    ),
    (
        "list-keys-function",
        "modules/functionapp.bicep",
        "value: appInsights.properties.ConnectionString",
        "value: listKeys(storage.id, '2023-05-01').keys[0].value",
        bicep.check_no_secrets,
        "listKeys(",
    ),
    (
        "account-key-connection-string",
        "modules/functionapp.bicep",
        "value: 'managedidentity'",
        "value: 'DefaultEndpointsProtocol=https;AccountName=x;AccountKey=${storage.name}'",
        bicep.check_no_secrets,
        "AccountKey=",
    ),
    (
        "shared-access-key",
        "modules/iothub.bicep",
        "output HOST_NAME string = hub.properties.hostName",
        "output HOST_NAME string = 'HostName=x;SharedAccessKeyName=a;SharedAccessKey=b'",
        bicep.check_no_secrets,
        "SharedAccessKey",
    ),
    (
        "primary-key-output",
        "modules/dps.bicep",
        "output NAME string = dps.name",
        "output NAME string = dps.properties.authorizationPolicies[0].primaryKey",
        bicep.check_no_secrets,
        ".primaryKey",
    ),
    (
        "secret-named-setting",
        "modules/functionapp.bicep",
        "name: 'CERTROLL_OPERATOR_ROLE'",
        "name: 'CERTROLL_PKCS11_PIN'",
        bicep.check_no_secrets,
        "CERTROLL_PKCS11_PIN",
    ),
    (
        "storage-tls-1-0",
        "modules/storage.bicep",
        "minimumTlsVersion: 'TLS1_2'",
        "minimumTlsVersion: 'TLS1_0'",
        bicep.check_tls,
        "minimumTlsVersion is 'TLS1_0'",
    ),
    (
        "storage-tls-unset",
        "modules/pki.bicep",
        "minimumTlsVersion: 'TLS1_2'",
        "",
        bicep.check_tls,
        "sets no minimumTlsVersion",
    ),
    (
        "iothub-tls-1-0",
        "modules/iothub.bicep",
        "minTlsVersion: '1.2'",
        "minTlsVersion: '1.0'",
        bicep.check_tls,
        "minTlsVersion is '1.0'",
    ),
    (
        "shared-key-on",
        "modules/storage.bicep",
        "allowSharedKeyAccess: false",
        "allowSharedKeyAccess: true",
        bicep.check_storage,
        "allowSharedKeyAccess must be false",
    ),
    (
        "http-allowed",
        "modules/pki.bicep",
        "supportsHttpsTrafficOnly: true",
        "supportsHttpsTrafficOnly: false",
        bicep.check_storage,
        "supportsHttpsTrafficOnly must be true",
    ),
    (
        "public-blobs-on-data-account",
        "modules/storage.bicep",
        "allowBlobPublicAccess: false",
        "allowBlobPublicAccess: true",
        bicep.check_storage,
        "allowBlobPublicAccess must be false",
    ),
    (
        "pki-container-listing",
        "modules/pki.bicep",
        "publicAccess: 'Blob'",
        "publicAccess: 'Container'",
        bicep.check_storage,
        "anonymous listing",
    ),
    (
        "public-deployment-container",
        "modules/storage.bicep",
        "publicAccess: 'None'",
        "publicAccess: 'Blob'",
        bicep.check_storage,
        "public outside the PKI",
    ),
    (
        "literal-public-network-access",
        "modules/keyvault.bicep",
        "    publicNetworkAccess: publicNetworkAccess\n",
        "    publicNetworkAccess: 'Enabled'\n",
        bicep.check_public_network_access,
        "not a parameter",
    ),
    (
        "public-network-access-unset",
        "modules/eventgrid.bicep",
        "    publicNetworkAccess: publicNetworkAccess\n",
        "",
        bicep.check_public_network_access,
        "leaves publicNetworkAccess unset",
    ),
    (
        "owner-role",
        "modules/roles.bicep",
        f"var keyVaultCryptoUserRoleId = '{CRYPTO_USER}'",
        f"var keyVaultCryptoUserRoleId = '{OWNER}'",
        bicep.check_roles,
        "role Owner",
    ),
    (
        "contributor-role-in-comment",
        "modules/roles.bicep",
        "// Key Vault Crypto User: sign/verify",
        f"// Contributor {CONTRIBUTOR} would be simpler; Key Vault Crypto User: sign/verify",
        bicep.check_roles,
        "role Contributor",
    ),
    (
        "crypto-user-on-resource-group",
        "modules/roles.bicep",
        "  scope: issuingKey\n",
        "",
        bicep.check_roles,
        "Key Vault Crypto User has no resource scope",
    ),
    (
        "crypto-user-on-vault",
        "modules/roles.bicep",
        "  scope: issuingKey\n",
        "  scope: vault\n",
        bicep.check_roles,
        "Key Vault Crypto User scoped to Microsoft.KeyVault/vaults;",
    ),
    (
        "role-never-assigned",
        "modules/roles.bicep",
        "roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', "
        "dpsDataContributorRoleId)",
        "roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', "
        "iotHubDataContributorRoleId)",
        bicep.check_roles,
        "Device Provisioning Service Data Contributor (enrollment slots",
    ),
    (
        "role-name-not-guid",
        "modules/roles.bicep",
        "name: guid(topic.id, principalId, eventGridDataSenderRoleId)",
        "name: 'topic-sender'",
        bicep.check_roles,
        "topicSender: name must be guid(...)",
    ),
    (
        "uncommented-role-variable",
        "modules/roles.bicep",
        "// EventGrid Data Sender: publish certroll's domain events\n",
        "",
        bicep.check_roles,
        "eventGridDataSenderRoleId has no comment",
    ),
    (
        "param-without-description",
        "modules/dps.bicep",
        "@description('Log Analytics workspace that receives the DPS logs.')\n",
        "",
        bicep.check_conventions,
        "param logAnalyticsWorkspaceId has no @description",
    ),
    (
        "lower-case-output",
        "main.bicep",
        "output DPS_ID_SCOPE string",
        "output dpsIdScope string",
        bicep.check_conventions,
        "output dpsIdScope is not UPPER_SNAKE",
    ),
    (
        "no-resource-token",
        "main.bicep",
        "var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))",
        "var resourceToken = toLower(environmentName)",
        bicep.check_conventions,
        "resourceToken",
    ),
    (
        "unknown-module-param",
        "main.bicep",
        "    keyStore: keyStore\n",
        "    keyStore: keyStore\n    keyStoreTypo: keyStore\n",
        bicep.check_module_params,
        "passes unknown param keyStoreTypo",
    ),
    (
        "missing-module-param",
        "main.bicep",
        "    principalId: functionApp.outputs.PRINCIPAL_ID\n",
        "",
        bicep.check_module_params,
        "does not pass required param principalId",
    ),
    (
        "missing-module-file",
        "main.bicep",
        "'modules/pki.bicep'",
        "'modules/pki-public.bicep'",
        bicep.check_module_paths,
        "missing modules/pki-public.bicep",
    ),
    # Microsoft's generated resource types (tests/infra/bicep-types)
    (
        "type-version-not-published",
        "modules/keyvault.bicep",
        "'Microsoft.KeyVault/vaults@2023-07-01'",
        "'Microsoft.KeyVault/vaults@2023-07-02'",
        _resource_types,
        "Microsoft.KeyVault/vaults@2023-07-02) is not in Microsoft's generated Bicep types",
    ),
    (
        "unknown-property-name",
        "modules/eventgrid.bicep",
        "disableLocalAuth: true",
        "disableLocalAuthentication: true",
        _resource_types,
        "properties.disableLocalAuthentication is not a property of TopicProperties",
    ),
    (
        "property-at-the-wrong-nesting",
        "modules/keyvault.bicep",
        "    kty: 'EC-HSM'",
        "    kty: 'EC-HSM'\n    sku: {\n      name: 'premium'\n    }",
        _resource_types,
        "properties.sku is not a property of KeyProperties",
    ),
    (
        "string-value-not-allowed",
        "modules/keyvault.bicep",
        "curveName: 'P-384'",
        "curveName: 'P-385'",
        _resource_types,
        "properties.curveName = 'P-385' is not one of",
    ),
    (
        "param-allows-an-undefined-value",
        "modules/eventgrid.bicep",
        "  'Disabled'\n])",
        "  'Off'\n])",
        _resource_types,
        "properties.publicNetworkAccess (param publicNetworkAccess allows it) = 'Off'",
    ),
    (
        "topic-schema-value-not-allowed",
        "modules/eventgrid.bicep",
        "inputSchema: 'EventGridSchema'",
        "inputSchema: 'EventGridSchemaV2'",
        _resource_types,
        "properties.inputSchema = 'EventGridSchemaV2' is not one of",
    ),
    (
        "read-only-property-set",
        "modules/eventgrid.bicep",
        "disableLocalAuth: true",
        "disableLocalAuth: true\n    endpoint: 'https://example.invalid'",
        _resource_types,
        "properties.endpoint is read-only",
    ),
]


@pytest.mark.parametrize(
    ("path", "old", "new", "checker", "expected"),
    [pytest.param(*m[1:], id=m[0]) for m in MUTATIONS],
)
def test_checker_reports_the_fault(
    infra_texts: dict[str, str],
    infra: Infra,
    path: str,
    old: str,
    new: str,
    checker: Checker,
    expected: str,
) -> None:
    assert checker(infra) == [], "the unmodified templates must pass this check"
    problems = checker(mutate(infra_texts, path, old, new))
    assert any(expected in p for p in problems), problems


# ----------------------------------------------------------------------------- settings

NEEDS = BindingNeeds(
    connections=frozenset({"CERTROLL_EVENTHUB", "CERTROLL_STORAGE"}),
    expressions=frozenset({"CERTROLL_WORK_QUEUE", "CERTROLL_TWIN_EVENTHUB"}),
    consumer_groups=frozenset({"$Default"}),
    functions=frozenset({"rotation_worker"}),
)


def _settings_problems(infra: Infra, required: frozenset[str] = frozenset()) -> list[str]:
    return bicep.check_settings(infra.app_settings(), NEEDS, required, SETTING_DEFAULTS)


def _drop_setting(texts: dict[str, str], name: str) -> Infra:
    """A copy without the appSettings entry ``name`` (cut along the parse tree)."""
    path = "modules/functionapp.bicep"
    source = bicep.BicepFile.parse(path, texts[path])
    site = next(r for r in source.resources if r.type == "Microsoft.Web/sites" and not r.existing)
    items = bicep.array_items(bicep.get_path(site.body, "properties", "siteConfig", "appSettings"))
    item = next(
        i for i in items if bicep.string_value(bicep.object_properties(i).get("name")) == name
    )
    data = texts[path].encode()
    cut = (data[: item.start_byte] + data[item.end_byte :]).decode()
    infra = Infra.from_texts({**texts, path: cut})
    assert infra.files[path].syntax_errors() == []
    return infra


def test_settings_baseline_passes(infra: Infra) -> None:
    assert (
        _settings_problems(
            infra,
            frozenset(SETTING_DEFAULTS)
            - {
                "CERTROLL_PKCS11_PIN",
                "CERTROLL_PKCS11_MODULE",
                "CERTROLL_PKCS11_TOKEN",
                "CERTROLL_PKCS11_KEY_LABEL",
                "CERTROLL_FILE_KEY_PASSWORD",
            },
        )
        == []
    )


def test_removed_binding_expression_setting_is_reported(infra_texts: dict[str, str]) -> None:
    problems = _settings_problems(_drop_setting(infra_texts, "CERTROLL_WORK_QUEUE"))
    assert "binding expression %CERTROLL_WORK_QUEUE% has no app setting" in problems


def test_removed_required_setting_is_reported(infra_texts: dict[str, str]) -> None:
    infra = _drop_setting(infra_texts, "CERTROLL_DPS_ENDPOINT")
    problems = _settings_problems(infra, frozenset({"CERTROLL_DPS_ENDPOINT"}))
    assert problems == ["setting CERTROLL_DPS_ENDPOINT is not set by infra"]


def test_removed_identity_connection_is_reported(infra_texts: dict[str, str]) -> None:
    texts = dict(infra_texts)
    infra = _drop_setting(texts, "CERTROLL_EVENTHUB__fullyQualifiedNamespace")
    texts["modules/functionapp.bicep"] = infra.files["modules/functionapp.bicep"].text
    infra = _drop_setting(texts, "CERTROLL_EVENTHUB__credential")
    problems = _settings_problems(infra)
    assert problems == [
        "connection CERTROLL_EVENTHUB (or CERTROLL_EVENTHUB__*) is not set by infra"
    ]


def test_removed_host_storage_is_reported(infra_texts: dict[str, str]) -> None:
    texts = dict(infra_texts)
    for name in ("AzureWebJobsStorage__accountName", "AzureWebJobsStorage__credential"):
        texts["modules/functionapp.bicep"] = (
            _drop_setting(texts, name).files["modules/functionapp.bicep"].text
        )
    problems = _settings_problems(Infra.from_texts(texts))
    assert any(p.startswith("connection AzureWebJobsStorage") for p in problems), problems


def test_unknown_certroll_setting_is_reported(infra_texts: dict[str, str]) -> None:
    infra = mutate(
        infra_texts,
        "modules/functionapp.bicep",
        "name: 'CERTROLL_OPERATOR_ROLE'",
        "name: 'CERTROLL_OPERATOR_ROLES'",
    )
    assert "infra sets CERTROLL_OPERATOR_ROLES, which certroll does not read" in (
        _settings_problems(infra)
    )


def test_flex_forbidden_setting_is_reported(infra_texts: dict[str, str]) -> None:
    infra = mutate(
        infra_texts,
        "modules/functionapp.bicep",
        "name: 'CERTROLL_HOME'",
        "name: 'FUNCTIONS_WORKER_RUNTIME'",
    )
    assert any(p.startswith("FUNCTIONS_WORKER_RUNTIME") for p in _settings_problems(infra))
