"""The Python worker's load-time checks of a v2-model function, applied in a test.

Azure Functions' Python worker indexes ``function_app.app`` and, for every function,
runs ``Registry.add_indexed_function`` (azure_functions_worker/functions.py) before the
host starts any of them: one refusal and indexing fails, so no function of the app runs.
This module reimplements those checks faithfully from the worker's source at commit
7e6acf36e43335ad69742923af9ff3d62b99242a (Azure/azure-functions-python-worker, MIT):

- ``validate_binding_direction`` -- no ``inout``; ``$return`` must be ``out``;
- ``get_explicit_and_implicit_return`` / ``get_return_binding``;
- ``is_context_required`` -- a ``context`` parameter must be ``azure.functions.Context``;
- ``validate_function_params`` -- parameter names equal binding names; every annotation is
  a ``type`` or a generic the worker's bundled ``typing_inspect`` recognises (vendored
  unchanged beside this module); ``Out[...]`` exactly for ``out`` bindings; and the
  binding's converter accepts the annotation (``check_input_type_annotation`` /
  ``check_output_type_annotation``);
- ``get_function_return_type`` -- the return annotation is a type the ``$return``
  binding's converter accepts.

The converters are azure-functions' own (``azure.functions.get_binding_registry()``, the
registry the worker loads in ``bindings/meta.py`` ``load_binding_registry``); a binding
type without a converter falls back to the worker's ``GenericBinding``
(``bindings/generic.py``). HTTP streaming (``HttpV2Registry``) and deferred bindings
(``azurefunctions-extensions-base``) are not used by certroll, so their branches are the
disabled ones.
"""

from __future__ import annotations

import inspect
import operator
import typing
from typing import Any

import azure.functions as func

from tests.support.azure_worker import typing_inspect

# azure_functions_worker/protos: BindingInfo.Direction and BindingInfo.DataType
DIRECTION_IN, DIRECTION_OUT, DIRECTION_INOUT = 0, 1, 2
DATA_TYPE_UNDEFINED = 0
HTTP_TRIGGER = "httpTrigger"  # azure_functions_worker/constants.py


class FunctionLoadError(RuntimeError):
    """As the worker raises it: ``cannot load the <name> function: <why>``."""

    def __init__(self, function_name: str, msg: str) -> None:
        super().__init__(f"cannot load the {function_name} function: {msg}")


class GenericBinding:
    """azure_functions_worker/bindings/generic.py: the checks of a converter-less binding."""

    @classmethod
    def check_input_type_annotation(cls, pytype: type) -> bool:
        return issubclass(pytype, (str, bytes))

    @classmethod
    def check_output_type_annotation(cls, pytype: type) -> bool:
        return issubclass(pytype, (str, bytes, bytearray))

    @classmethod
    def has_implicit_output(cls, bind_name: str | None) -> bool:
        return bind_name != "durableClient"


# ---------------------------------------------------------------- bindings/meta.py


def get_binding(bind_name: str) -> Any:
    binding = func.get_binding_registry().get(bind_name)
    return GenericBinding if binding is None else binding


def check_input_type_annotation(bind_name: str, pytype: Any) -> bool:
    # INPUT_TYPE_CHECK_OVERRIDE_MAP[httpTrigger] without HTTP streaming is the same call
    return bool(get_binding(bind_name).check_input_type_annotation(pytype))


def check_output_type_annotation(bind_name: str, pytype: Any) -> bool:
    return bool(get_binding(bind_name).check_output_type_annotation(pytype))


def has_implicit_output(bind_name: str) -> bool:
    binding = get_binding(bind_name)
    if binding is GenericBinding:
        return GenericBinding.has_implicit_output(bind_name)
    return bool(getattr(binding, "has_implicit_output", lambda: False)())


# ---------------------------------------------------------------- functions.py Registry


def _direction(binding: Any) -> int:
    value = getattr(binding.direction, "value", binding.direction)
    return int(value)


def _data_type(binding: Any) -> int:
    value = getattr(binding, "data_type", None)
    value = getattr(value, "value", value)
    return DATA_TYPE_UNDEFINED if value is None else int(value)


def validate_binding_direction(binding_name: str, direction: int, func_name: str) -> None:
    if direction == DIRECTION_INOUT:
        raise FunctionLoadError(func_name, '"inout" bindings are not supported')
    if binding_name == "$return" and direction != DIRECTION_OUT:
        raise FunctionLoadError(func_name, '"$return" binding must have direction set to "out"')


def is_context_required(
    params: dict[str, inspect.Parameter], bound: dict[str, Any], annotations: dict[str, Any],
    func_name: str,
) -> bool:
    if "context" in params and "context" not in bound:
        params.pop("context")
        if "context" in annotations:
            anno = annotations["context"]
            if not isinstance(anno, type) or anno.__name__ != "Context":
                raise FunctionLoadError(
                    func_name,
                    'the "context" parameter is expected to be of type '
                    f"azure.functions.Context, got {anno!r}",
                )
        return True
    return False


def validate_function_params(
    params: dict[str, inspect.Parameter], bound: dict[str, Any], annotations: dict[str, Any],
    func_name: str,
) -> None:
    if set(params) - set(bound):
        raise FunctionLoadError(
            func_name,
            "the following parameters are declared in Python but not in function.json: "
            f"{set(params) - set(bound)!r}",
        )
    if set(bound) - set(params):
        raise FunctionLoadError(
            func_name,
            "the following parameters are declared in function.json but not in Python: "
            f"{set(bound) - set(params)!r}",
        )
    for param in params.values():
        binding = bound[param.name]
        has_anno = param.name in annotations
        anno = annotations.get(param.name)
        if has_anno:
            if typing_inspect.is_generic_type(anno):
                origin = typing_inspect.get_origin(anno)
                if origin is not None:
                    is_param_out = isinstance(origin, type) and origin.__name__ == "Out"
                else:
                    is_param_out = isinstance(anno, type) and anno.__name__ == "Out"
            else:
                is_param_out = isinstance(anno, type) and anno.__name__ == "Out"
        else:
            is_param_out = False
        is_binding_out = _direction(binding) == DIRECTION_OUT
        if is_param_out:
            args = typing_inspect.get_args(anno)
            if len(args) != 1:
                raise FunctionLoadError(
                    func_name, f"binding {param.name} has invalid Out annotation {anno!r}"
                )
            py_type = args[0]
            if isinstance(py_type, tuple) and typing_inspect.is_generic_type(py_type[0]):
                py_type = operator.getitem(py_type[0], *py_type[1:])
        else:
            py_type = anno
        if (
            has_anno
            and not isinstance(py_type, type)
            and not typing_inspect.is_generic_type(py_type)
        ):
            raise FunctionLoadError(
                func_name, f"binding {param.name} has invalid non-type annotation {anno!r}"
            )
        if is_binding_out and has_anno and not is_param_out:
            raise FunctionLoadError(
                func_name,
                f'binding {param.name} is declared to have the "out" direction, but its '
                "annotation in Python is not a subclass of azure.functions.Out",
            )
        if not is_binding_out and is_param_out:
            raise FunctionLoadError(
                func_name,
                f'binding {param.name} is declared to have the "in" direction in '
                "function.json, but its annotation is azure.functions.Out in Python",
            )
        if has_anno and py_type in (str, bytes) and not has_implicit_output(binding.type):
            bind_type = "generic"
        else:
            bind_type = binding.type
        if has_anno:
            if is_param_out:
                ok = check_output_type_annotation(bind_type, py_type)
            else:
                ok = check_input_type_annotation(bind_type, py_type)
            if not ok:
                name = getattr(py_type, "__name__", repr(py_type))
                if _data_type(binding) != DATA_TYPE_UNDEFINED:
                    raise FunctionLoadError(
                        func_name,
                        f'{param.name!r} binding type "{binding.type}" and dataType '
                        f'"{binding.data_type}" in function.json do not match the '
                        f'corresponding function parameter\'s Python type annotation "{name}"',
                    )
                raise FunctionLoadError(
                    func_name,
                    f'type of {param.name} binding in function.json "{binding.type}" does '
                    f'not match its Python annotation "{name}"',
                )


def check_return_type(
    annotations: dict[str, Any], has_explicit_return: bool, binding_name: str | None,
    func_name: str,
) -> None:
    """``get_function_return_type`` without building the worker's ParamTypeInfo."""
    if has_explicit_return and "return" in annotations:
        anno = annotations["return"]
        if typing_inspect.is_generic_type(anno) and typing_inspect.get_origin(
            anno
        ).__name__ == "Out":
            raise FunctionLoadError(
                func_name, "return annotation should not be azure.functions.Out"
            )
        if not isinstance(anno, type):
            raise FunctionLoadError(func_name, f"has invalid non-type return annotation {anno!r}")
        assert binding_name is not None
        if not check_output_type_annotation(binding_name, anno):
            raise FunctionLoadError(
                func_name,
                f'Python return annotation "{anno.__name__}" does not match binding type '
                f'"{binding_name}"',
            )


def check_indexed_function(function: Any) -> None:
    """``Registry.add_indexed_function``'s checks for one ``app.get_functions()`` item;
    raises :class:`FunctionLoadError` where the worker would refuse to load the app."""
    user_fn = function.get_user_function()
    func_name = function.get_function_name()
    params = dict(inspect.signature(user_fn).parameters)
    annotations = typing.get_type_hints(user_fn)
    bound: dict[str, Any] = {}
    has_explicit_return = False
    return_binding_name: str | None = None
    explicit_set = False
    for binding in function.get_bindings():
        validate_binding_direction(binding.name, _direction(binding), func_name)
        if binding.name == "$return":
            has_explicit_return = True
        else:
            bound[binding.name] = binding
        # get_return_binding
        if not explicit_set:
            if binding.name == "$return":
                return_binding_name = binding.type
                explicit_set = True
            elif has_implicit_output(binding.type):
                return_binding_name = binding.type
    is_context_required(params, bound, annotations, func_name)
    validate_function_params(params, bound, annotations, func_name)
    check_return_type(annotations, has_explicit_return, return_binding_name, func_name)
