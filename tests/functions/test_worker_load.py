"""Every indexed function passes the Python worker's load-time checks.

The dev host calls the user functions directly, so nothing else notices an annotation the
worker refuses; one refusal stops the whole Function App from indexing.
(tests/support/azure_worker/load_rules.py: the worker's checks, with their source.)
"""

from __future__ import annotations

import typing

import azure.functions as func
import pytest

from tests.functions.fakes import indexed_functions
from tests.support.azure_worker.load_rules import FunctionLoadError, check_indexed_function

FUNCTIONS = {fn.get_function_name(): fn for fn in indexed_functions()}


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_function_loads_in_the_python_worker(name: str) -> None:
    check_indexed_function(FUNCTIONS[name])


def _batch_trigger(annotation: object) -> typing.Any:
    app = func.FunctionApp()

    @app.event_hub_message_trigger(
        arg_name="events", event_hub_name="hub", connection="CONN", cardinality="many"
    )
    def batch(events):  # type: ignore[no-untyped-def]
        return None

    batch_fn = app.get_functions()[0]
    batch_fn.get_user_function().__annotations__ = {"events": annotation, "return": None}
    return batch_fn


def test_pep585_list_is_refused_as_the_worker_refuses_it() -> None:
    with pytest.raises(FunctionLoadError, match="invalid non-type annotation"):
        check_indexed_function(_batch_trigger(list[func.EventHubEvent]))


def test_typing_list_is_accepted() -> None:
    check_indexed_function(_batch_trigger(typing.List[func.EventHubEvent]))  # noqa: UP006


def test_the_event_hub_converter_refuses_pep585_list_too() -> None:
    converter = func.get_binding_registry().get("eventHubTrigger")
    assert not converter.check_input_type_annotation(list[func.EventHubEvent])
    assert converter.check_input_type_annotation(typing.List[func.EventHubEvent])  # noqa: UP006
