"""Offline checks of infra/: syntax, API versions, conventions, security posture."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.infra import bicep
from tests.infra.bicep import Infra, get_path, string_value
from tests.infra.conftest import INFRA_DIR

REPO = INFRA_DIR.parent

ALLOW_LIST = Path(__file__).with_name("allowed_api_versions.txt")


def test_every_module_is_parsed(infra: Infra) -> None:
    on_disk = {p.relative_to(INFRA_DIR).as_posix() for p in INFRA_DIR.rglob("*.bicep")}
    assert set(infra.files) == on_disk
    assert {"main.bicep", "modules/functionapp.bicep", "modules/roles.bicep"} <= on_disk


@pytest.mark.parametrize(
    "path", sorted(p.relative_to(INFRA_DIR).as_posix() for p in INFRA_DIR.rglob("*.bicep"))
)
def test_bicep_parses_without_errors(infra: Infra, path: str) -> None:
    assert infra.files[path].syntax_errors() == []


def test_api_versions_are_in_the_allow_list(infra: Infra) -> None:
    allowed = bicep.load_allowed_api_versions(ALLOW_LIST)
    assert bicep.check_api_versions(infra, allowed) == []


def test_properties_match_microsofts_resource_types(infra: Infra) -> None:
    """Every type@version and every property set is in Microsoft's generated Bicep types
    (tests/infra/bicep-types, copied from Azure/bicep-types-az)."""
    assert bicep.check_resource_types(infra, bicep.TypeLibrary.load()) == []


def test_every_used_type_version_has_its_types_json(infra: Infra) -> None:
    library = bicep.TypeLibrary.load()
    used = {f"{r.type}@{r.api_version}".lower() for _, r in infra.resources()}
    assert used - set(library.resources) == set()


def test_allow_list_has_no_unused_entries(infra: Infra) -> None:
    used = {f"{r.type}@{r.api_version}".lower() for _, r in infra.resources()}
    assert bicep.load_allowed_api_versions(ALLOW_LIST) - used == set()


def test_modules_resolve_and_receive_their_params(infra: Infra) -> None:
    assert bicep.check_module_paths(infra) == []
    assert bicep.check_module_params(infra) == []


def test_conventions(infra: Infra) -> None:
    assert bicep.check_conventions(infra) == []


def test_no_secrets_in_templates(infra: Infra) -> None:
    assert bicep.check_no_secrets(infra) == []


def test_tls_minimums(infra: Infra) -> None:
    assert bicep.check_tls(infra) == []


def test_storage_posture(infra: Infra) -> None:
    assert bicep.check_storage(infra) == []


def test_public_network_access_follows_parameters(infra: Infra) -> None:
    assert bicep.check_public_network_access(infra) == []


def test_roles_least_privilege(infra: Infra) -> None:
    assert bicep.check_roles(infra) == []


def test_function_identity_roles_use_the_issuing_key_scope(infra: Infra) -> None:
    crypto = [
        ra
        for ra in infra.role_assignments()
        if "12338af0-0e69-4776-bea7-57ae8d297424" in ra.role_ids
    ]
    assert [(ra.file, ra.scope_type) for ra in crypto] == [
        ("modules/roles.bicep", "Microsoft.KeyVault/vaults/keys")
    ]


def test_flex_consumption_plan(infra: Infra) -> None:
    f = infra.files["modules/functionapp.bicep"]
    plan = next(r for r in f.resources if r.type == "Microsoft.Web/serverfarms")
    assert string_value(get_path(plan.body, "sku", "name")) == "FC1"
    assert string_value(get_path(plan.body, "sku", "tier")) == "FlexConsumption"
    site = next(r for r in f.resources if r.type == "Microsoft.Web/sites" and not r.existing)
    config = get_path(site.body, "properties", "functionAppConfig")
    assert string_value(get_path(config, "runtime", "name")) == "python"
    assert string_value(get_path(config, "runtime", "version")) == "3.11"
    storage = get_path(config, "deployment", "storage")
    assert string_value(get_path(storage, "authentication", "type")) == "SystemAssignedIdentity"
    assert string_value(get_path(site.body, "identity", "type")) == "SystemAssigned"
    assert bicep.bool_value(get_path(site.body, "properties", "httpsOnly")) is True


def test_app_service_authentication_returns_401(infra: Infra) -> None:
    f = infra.files["modules/functionapp.bicep"]
    auth = next(r for r in f.resources if r.type == "Microsoft.Web/sites/config")
    assert string_value(get_path(auth.body, "name")) == "authsettingsV2"
    validation = get_path(auth.body, "properties", "globalValidation")
    assert bicep.bool_value(get_path(validation, "requireAuthentication")) is True
    assert string_value(get_path(validation, "unauthenticatedClientAction")) == "Return401"
    aad = get_path(auth.body, "properties", "identityProviders", "azureActiveDirectory")
    assert bicep.bool_value(get_path(aad, "enabled")) is True
    assert get_path(aad, "validation", "allowedAudiences") is not None
    assert get_path(aad, "registration", "clientSecretSettingName") is None


def test_event_grid_webhook_is_excluded_from_platform_auth_in_both_casings(infra: Infra) -> None:
    f = infra.files["modules/functionapp.bicep"]
    auth = next(r for r in f.resources if r.type == "Microsoft.Web/sites/config")
    excluded = get_path(auth.body, "properties", "globalValidation", "excludedPaths")
    paths = {string_value(n) for n in bicep.array_items(excluded)}
    assert paths == {"/runtime/webhooks/eventgrid", "/runtime/webhooks/EventGrid"}


def test_operator_token_settings_come_from_the_auth_parameters(infra: Infra) -> None:
    settings = infra.app_settings()
    for name in (
        "CERTROLL_AUTH_TENANT_ID",
        "CERTROLL_AUTH_AUDIENCES",
        "CERTROLL_AUTH_METADATA_URL",
        "CERTROLL_PLATFORM_AUTH_ENFORCED",
    ):
        assert name in settings, name
    text = infra.files["modules/functionapp.bicep"].text
    assert "join(audiences, ',')" in text
    assert "/v2.0/.well-known/openid-configuration" in text
    assert "platformAuthEnforced ? 'true' : 'false'" in text


def test_issuing_key_is_ec_p384_sign_verify_only(infra: Infra) -> None:
    keys = [
        r
        for _, r in infra.resources()
        if r.type in {"Microsoft.KeyVault/vaults/keys", "Microsoft.KeyVault/managedHSMs/keys"}
        and not r.existing
    ]
    assert len(keys) == 2
    for key in keys:
        props = get_path(key.body, "properties")
        assert string_value(get_path(props, "kty")) == "EC-HSM"
        assert string_value(get_path(props, "curveName")) == "P-384"
        ops = [string_value(n) for n in bicep.array_items(get_path(props, "keyOps"))]
        assert sorted(ops, key=str) == ["sign", "verify"]
        assert bicep.bool_value(get_path(props, "attributes", "exportable")) is False


def test_key_vault_premium_rbac_purge_protection(infra: Infra) -> None:
    f = infra.files["modules/keyvault.bicep"]
    vault = next(r for r in f.resources if r.type == "Microsoft.KeyVault/vaults")
    props = get_path(vault.body, "properties")
    assert string_value(get_path(props, "sku", "name")) == "premium"
    for flag in ("enableRbacAuthorization", "enableSoftDelete", "enablePurgeProtection"):
        assert bicep.bool_value(get_path(props, flag)) is True, flag


def test_iot_hub_routes_twin_changes_with_identity(infra: Infra) -> None:
    f = infra.files["modules/iothub.bicep"]
    hub = next(r for r in f.resources if r.type == "Microsoft.Devices/IotHubs")
    routing = get_path(hub.body, "properties", "routing")
    endpoints = bicep.array_items(get_path(routing, "endpoints", "eventHubs"))
    assert [string_value(get_path(e, "authenticationType")) for e in endpoints] == ["identityBased"]
    routes = bicep.array_items(get_path(routing, "routes"))
    assert [string_value(get_path(r, "source")) for r in routes] == ["TwinChangeEvents"]
    assert bicep.bool_value(get_path(hub.body, "properties", "disableDeviceSAS")) is True
    diag = [r for r in f.resources if r.type == "Microsoft.Insights/diagnosticSettings"]
    categories = {
        string_value(get_path(log, "category"))
        for d in diag
        for log in bicep.array_items(get_path(d.body, "properties", "logs"))
    }
    assert "Connections" in categories


def test_local_host_runs_one_invocation_per_event_hub_partition(
    infra_texts: dict[str, str],
) -> None:
    from local.demo import DemoOptions
    from local.stack import EVENT_HUB_PARTITIONS

    declared = re.search(
        r"^param partitionCount int = (\d+)$", infra_texts["modules/eventhubs.bicep"], re.M
    )
    assert declared is not None
    assert int(declared.group(1)) == EVENT_HUB_PARTITIONS == DemoOptions().partitions


def test_storage_declares_every_table_the_app_uses(infra_texts: dict[str, str]) -> None:
    from shared.adapters.storage_clients import table_names
    from shared.settings import Settings

    block = re.search(
        r"^var tableNames = \[\n(.*?)^\]", infra_texts["modules/storage.bicep"], re.M | re.S
    )
    assert block is not None
    declared = {
        line.strip().strip("'").replace("${tablePrefix}", "")
        for line in block.group(1).splitlines()
    }
    used = {name.lower() for name in table_names(Settings({"CERTROLL_TABLE_PREFIX": ""}))}
    assert declared == used  # table names are case-insensitive in Azure


def test_event_grid_subscription_filters_lifecycle_events(infra: Infra) -> None:
    f = infra.files["modules/eventgrid-subscription.bicep"]
    sub = next(r for r in f.resources if not r.existing)
    dest = get_path(sub.body, "properties", "destination")
    assert string_value(get_path(dest, "endpointType")) == "AzureFunction"
    types = bicep.array_items(get_path(sub.body, "properties", "filter", "includedEventTypes"))
    assert {string_value(t) for t in types} == {
        "Microsoft.Devices.DeviceConnected",
        "Microsoft.Devices.DeviceCreated",
    }
    topic = infra.files["modules/eventgrid.bicep"].resource("topic")
    assert topic is not None
    assert bicep.bool_value(get_path(topic.body, "properties", "disableLocalAuth")) is True


def test_parameters_file_names_declared_params(infra: Infra) -> None:
    values = json.loads((INFRA_DIR / "main.parameters.json").read_text())["parameters"]
    declared = infra.main.params
    assert set(values) - set(declared) == set()
    required = {
        name
        for name, node in bicep._param_nodes(infra.main).items()
        if not any(c.type == "=" for c in node.children)
    }
    assert required - set(values) == set()


def test_alert_rules_and_action_group_are_wired(infra: Infra) -> None:
    assert bicep.check_alerts(infra) == []


def test_alert_metrics_are_emitted_by_the_app_and_documented() -> None:
    """Every metric an alert reads is a name the code emits and docs/operations.md
    explains."""
    sources = "".join(
        p.read_text(encoding="utf-8")
        for folder in ("shared", "functions")
        for p in (REPO / folder).rglob("*.py")
    )
    docs = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
    for name, (metric, _) in bicep.ALERT_NEEDS.items():
        short = metric.removeprefix("certroll.")
        assert metric in sources or short in sources, (name, metric)
        assert metric in docs, (name, metric)
        assert name in docs, name


@pytest.mark.parametrize(
    ("mutation", "replacement", "expected"),
    [
        ("actionGroup.id\n      ]", "'none'\n      ]", "do not notify the action group"),
        ('name == "certroll.throttled"', 'name == "certroll.throttles"',
         "does not read certroll.throttled"),
        ("@secure()\n", "", "must be @secure()"),
        ("appInsights.id\n    ]", "'x'\n    ]", "not scoped to Application Insights"),
        ("name: 'poison-messages'", "name: 'poison'", "no alert rule poison-messages"),
        ("measure: 'days_left'", "measure: 'days'", "measure days is not a column"),
    ],
)
def test_alert_checks_catch_mistakes(
    infra_texts: dict[str, str], mutation: str, replacement: str, expected: str
) -> None:
    texts = dict(infra_texts)
    original = texts["modules/alerts.bicep"]
    assert mutation in original
    texts["modules/alerts.bicep"] = original.replace(mutation, replacement, 1)
    problems = bicep.check_alerts(Infra.from_texts(texts))
    assert any(expected in p for p in problems), problems
