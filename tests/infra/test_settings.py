"""The Function App settings infra sets agree with what the code and bindings read."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from shared.settings import SETTING_DEFAULTS
from tests.infra import bicep
from tests.infra.bicep import BindingNeeds, Infra

REPO = Path(__file__).resolve().parents[2]
LOCAL_SETTINGS_EXAMPLE = REPO / "local.settings.json.example"

#: Settings only the local stack reads: the PKCS#11 (SoftHSM2) and file key backends.
#: In Azure the issuing key is in Key Vault / Managed HSM (CERTROLL_KEY_BACKEND=keyvault).
LOCAL_ONLY = frozenset(
    {
        "CERTROLL_PKCS11_MODULE",
        "CERTROLL_PKCS11_TOKEN",
        "CERTROLL_PKCS11_PIN",
        "CERTROLL_PKCS11_KEY_LABEL",
        "CERTROLL_FILE_KEY_PASSWORD",
    }
)

#: Every name production needs from SETTING_DEFAULTS. CERTROLL_STORAGE is satisfied by
#: its identity-based form (CERTROLL_STORAGE__*ServiceUri + __credential).
PRODUCTION_SETTINGS = frozenset(SETTING_DEFAULTS) - LOCAL_ONLY


def _function_app() -> ModuleType:
    """``function_app`` once it imports; a skip with the reason while it does not."""
    try:
        return importlib.import_module("function_app")
    except ImportError as exc:  # pragma: no cover - only while function_app.py is absent
        pytest.skip(f"function_app does not import yet: {exc}")


def _indexed() -> list[Any]:
    """``app.get_functions()``; azure-functions reports every name as a duplicate on a
    second call in one process, so forget the previous indexing first."""
    app = _function_app().app
    app.functions_bindings = None
    return list(app.get_functions())


@pytest.fixture(scope="module")
def needs() -> BindingNeeds:
    return bicep.binding_needs(_indexed())


def test_binding_needs_are_read_from_the_indexed_app(needs: BindingNeeds) -> None:
    assert {"CERTROLL_EVENTHUB", "CERTROLL_STORAGE"} <= needs.connections
    assert {
        "CERTROLL_TWIN_EVENTHUB",
        "CERTROLL_CONNECTIONS_EVENTHUB",
        "CERTROLL_WORK_QUEUE",
        "CERTROLL_SWEEP_SCHEDULE",
    } <= needs.expressions


def test_infra_sets_every_setting_the_app_needs(infra: Infra, needs: BindingNeeds) -> None:
    problems = bicep.check_settings(
        infra.app_settings(), needs, PRODUCTION_SETTINGS, SETTING_DEFAULTS
    )
    assert problems == []


def test_identity_based_connections_name_a_credential(infra: Infra, needs: BindingNeeds) -> None:
    settings = infra.app_settings()
    for conn in sorted(needs.connections | {"AzureWebJobsStorage"}):
        credential = settings.get(f"{conn}__credential")
        assert credential is not None, conn
        assert bicep.string_value(credential) == "managedidentity", conn
        assert conn not in settings, f"{conn} must be identity-based, not a connection string"


def test_key_backend_is_keyvault(infra: Infra) -> None:
    settings = infra.app_settings()
    assert bicep.string_value(settings["CERTROLL_KEY_BACKEND"]) == "keyvault"
    assert bicep.string_value(settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"]) == (
        "Authorization=AAD"
    )


def test_event_grid_subscription_targets_an_indexed_function(
    infra: Infra, needs: BindingNeeds
) -> None:
    params = infra.files["modules/eventgrid-subscription.bicep"]
    node = next(
        c
        for c in params.root.children
        if c.type == "parameter_declaration" and c.named_children[0].text == b"functionName"
    )
    target = bicep.string_value(node.named_children[-1])
    assert target in needs.functions
    kinds = {
        fn.get_function_name(): [b.get_dict_repr()["type"] for b in fn.get_bindings()]
        for fn in _indexed()
    }
    assert "eventGridTrigger" in kinds[str(target)]


def test_consumer_groups_exist(infra: Infra, needs: BindingNeeds) -> None:
    """The triggers read the consumer group infra creates (an app setting whose default is
    that group; the Function App's setting is the eventhubs module's output), not $Default."""
    from shared.settings import SETTING_DEFAULTS

    declared = str(bicep.string_value(infra.main.variables["consumerGroupName"]))
    resolved = set()
    for group in needs.consumer_groups:
        name = group.strip("%")
        assert group == f"%{name}%", f"consumer group {group} is not an app setting"
        assert name in infra.app_settings(), f"{name} is not a Function App setting"
        resolved.add(SETTING_DEFAULTS[name])
    assert resolved == {declared}
    assert "$Default" not in resolved


def _topic_schemas(infra: Infra) -> list[str | None]:
    """inputSchema of every Event Grid custom topic: a literal, or None when it is not one."""
    out = []
    for _, res in infra.resources():
        if res.type == "Microsoft.EventGrid/topics" and not res.existing:
            out.append(bicep.string_value(bicep.get_path(res.body, "properties", "inputSchema")))
    return out


def test_event_grid_input_schema_matches_the_publisher(infra: Infra) -> None:
    """The topic takes exactly the schema the publisher sends, fixed in the template
    (no parameter can switch the topic to a schema the publisher does not speak)."""
    from azure.eventgrid import EventGridEvent

    from shared.adapters import eventgrid
    from shared.domain.model import DomainEvent

    sent = eventgrid.to_eventgrid_event(DomainEvent("CertificateIssued", "devices/d", {}))
    assert isinstance(sent, EventGridEvent)
    assert eventgrid.INPUT_SCHEMA == "EventGridSchema"
    assert _topic_schemas(infra) == [eventgrid.INPUT_SCHEMA]


def test_event_grid_schema_check_catches_a_parameterised_topic(
    infra_texts: dict[str, str],
) -> None:
    path = "modules/eventgrid.bicep"
    text = infra_texts[path].replace(
        "inputSchema: 'EventGridSchema'", "inputSchema: 'CloudEventSchemaV1_0'"
    )
    assert text != infra_texts[path]
    assert _topic_schemas(Infra.from_texts({**infra_texts, path: text})) == ["CloudEventSchemaV1_0"]


def test_local_settings_example_agrees_with_infra(infra: Infra, needs: BindingNeeds) -> None:
    if not LOCAL_SETTINGS_EXAMPLE.exists():  # pragma: no cover - written by the local stack
        pytest.skip("local.settings.json.example is not there yet")
    local = set(json.loads(LOCAL_SETTINGS_EXAMPLE.read_text())["Values"])
    local_bases = {bicep.base_name(n) for n in local if n.startswith("CERTROLL_")}
    infra_bases = {bicep.base_name(n) for n in infra.app_settings() if n.startswith("CERTROLL_")}
    assert infra_bases - local_bases == set(), "set in Azure but missing locally"
    assert local_bases - infra_bases <= LOCAL_ONLY, "set locally but missing in Azure"
    known = set(SETTING_DEFAULTS) | needs.connections
    assert local_bases - known == set(), "local names certroll does not read"
