"""Function indexing: every trigger's settings exist locally and in infra."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest

import function_app
from shared.settings import SETTING_DEFAULTS
from tests.functions.fakes import indexed_functions

ROOT = Path(__file__).resolve().parents[2]
EXPRESSION = re.compile(r"%([A-Za-z0-9_]+)%")

EXPECTED = {
    "twin_changes": "eventHubTrigger",
    "connection_failures": "eventHubTrigger",
    "device_lifecycle": "eventGridTrigger",
    "daily_sweep": "timerTrigger",
    "rotation_worker": "queueTrigger",
    "devices_api": "httpTrigger",
    "ca_roll_api": "httpTrigger",
    "campaigns_api": "httpTrigger",
    "openapi_document": "httpTrigger",
}


def triggers() -> dict[str, dict[str, Any]]:
    out = {}
    for fn in indexed_functions():
        binding = json.loads(json.dumps(fn.get_trigger().get_dict_repr(), default=str))
        out[fn.get_function_name()] = binding
    return out


def required_settings(binding: dict[str, Any]) -> tuple[set[str], set[str]]:
    """(connection setting prefixes, exact setting names) a trigger binding needs."""
    connections = {binding["connection"]} if binding.get("connection") else set()
    exact = set()
    for value in binding.values():
        if isinstance(value, str):
            exact.update(EXPRESSION.findall(value))
    return connections, exact


def all_required() -> tuple[set[str], set[str]]:
    connections: set[str] = set()
    exact: set[str] = set()
    for binding in triggers().values():
        c, e = required_settings(binding)
        connections |= c
        exact |= e
    return connections, exact


def has_connection(names: set[str], prefix: str) -> bool:
    return prefix in names or any(n.startswith(prefix + "__") for n in names)


def local_values() -> dict[str, str]:
    doc = json.loads((ROOT / "local.settings.json.example").read_text())
    assert doc["IsEncrypted"] is False
    values: dict[str, str] = doc["Values"]
    return values


def bicep_texts() -> dict[Path, str]:
    return {p: p.read_text() for p in sorted((ROOT / "infra").rglob("*.bicep"))}


def bicep_setting_names() -> set[str]:
    names: set[str] = set()
    for text in bicep_texts().values():
        names.update(re.findall(r"\bname:\s*'([A-Za-z][A-Za-z0-9_]*)'", text))
    return names


def test_the_app_has_exactly_the_expected_functions() -> None:
    assert {name: b["type"] for name, b in triggers().items()} == EXPECTED


def test_bindings_name_their_settings() -> None:
    got = triggers()
    assert got["twin_changes"]["eventHubName"] == "%CERTROLL_TWIN_EVENTHUB%"
    assert got["connection_failures"]["eventHubName"] == "%CERTROLL_CONNECTIONS_EVENTHUB%"
    for name in ("twin_changes", "connection_failures"):
        assert got[name]["connection"] == "CERTROLL_EVENTHUB"
        assert got[name]["cardinality"].lower().endswith("many")
        assert got[name]["consumerGroup"] == "%CERTROLL_EVENTHUB_CONSUMER_GROUP%"
    assert got["daily_sweep"]["schedule"] == "%CERTROLL_SWEEP_SCHEDULE%"
    assert got["daily_sweep"]["runOnStartup"] is False
    assert got["rotation_worker"]["queueName"] == "%CERTROLL_WORK_QUEUE%"
    assert got["rotation_worker"]["connection"] == "CERTROLL_STORAGE"
    for name in ("devices_api", "ca_roll_api", "campaigns_api", "openapi_document"):
        assert got[name]["authLevel"].lower().endswith("function")
    assert all_required() == (
        {"CERTROLL_EVENTHUB", "CERTROLL_STORAGE"},
        {
            "CERTROLL_TWIN_EVENTHUB",
            "CERTROLL_CONNECTIONS_EVENTHUB",
            "CERTROLL_EVENTHUB_CONSUMER_GROUP",
            "CERTROLL_SWEEP_SCHEDULE",
            "CERTROLL_WORK_QUEUE",
        },
    )


def test_event_hub_triggers_have_a_retry_policy() -> None:
    for fn in indexed_functions():
        retry = fn.get_settings_dict("retry_policy")
        if fn.get_trigger().get_dict_repr()["type"] == "eventHubTrigger":
            assert retry is not None, fn.get_function_name()
            assert retry["strategy"] == "exponential_backoff"
            assert int(retry["max_retry_count"]) >= 3
        else:
            assert retry is None, fn.get_function_name()


def test_azure_logger_is_turned_down() -> None:
    assert function_app.app.auth_level.name == "FUNCTION"
    assert logging.getLogger("azure").level == logging.WARNING


def test_local_settings_example_provides_every_setting() -> None:
    values = local_values()
    assert values["FUNCTIONS_WORKER_RUNTIME"] == "python"
    assert values["AzureWebJobsStorage"] == "UseDevelopmentStorage=true"
    missing = sorted(n for n in SETTING_DEFAULTS if n not in values)
    assert not missing, f"local.settings.json.example lacks {missing}"
    connections, exact = all_required()
    for name in sorted(exact):
        assert values.get(name), f"binding setting {name} is empty in the example"
    for prefix in sorted(connections):
        assert has_connection(set(values), prefix), f"no {prefix} connection in the example"
    assert values["CERTROLL_SWEEP_SCHEDULE"] == SETTING_DEFAULTS["CERTROLL_SWEEP_SCHEDULE"]


def test_infra_sets_every_binding_setting() -> None:
    texts = bicep_texts()
    assert texts, "infra/ has no .bicep files yet: the Function App's settings are not deployed"
    names = bicep_setting_names()
    connections, exact = all_required()
    missing = sorted(n for n in exact if n not in names)
    missing += sorted(f"{p} (or {p}__*)" for p in connections if not has_connection(names, p))
    if not has_connection(names, "AzureWebJobsStorage"):
        missing.append("AzureWebJobsStorage (or AzureWebJobsStorage__*)")
    assert not missing, f"no app setting in infra/**/*.bicep for: {', '.join(missing)}"


def test_infra_sets_the_operator_role_and_subscribes_the_event_grid_function() -> None:
    texts = bicep_texts()
    if not texts:
        pytest.fail("infra/ has no .bicep files yet")
    assert "CERTROLL_OPERATOR_ROLE" in bicep_setting_names()
    joined = "\n".join(texts.values())
    for name, binding in triggers().items():
        if binding["type"] == "eventGridTrigger":
            assert f"'{name}'" in joined, f"no Event Grid subscription names function {name}"


def test_timeouts_follow_host_json() -> None:
    """The dev host's queue lease and the time after which a record left in
    csr_received counts as stuck both stand for host.json's functionTimeout."""
    from local.devhost import FUNCTION_TIMEOUT_SECONDS, MAX_DEQUEUE_COUNT
    from shared.domain.policy import RotationPolicy

    host = json.loads((ROOT / "host.json").read_text())
    hours, minutes, seconds = (int(p) for p in host["functionTimeout"].split(":"))
    timeout = hours * 3600 + minutes * 60 + seconds
    assert FUNCTION_TIMEOUT_SECONDS == timeout
    assert RotationPolicy().work_timeout.total_seconds() == timeout
    assert host["extensions"]["queues"]["maxDequeueCount"] == MAX_DEQUEUE_COUNT
