"""A small reader of Bicep files over the tree-sitter-bicep parse tree, and the checks
that keep ``infra/`` honest without the Bicep CLI or a cloud.

``Infra.load(path)`` parses ``main.bicep`` and ``modules/*.bicep``; ``Infra.from_texts``
parses given texts (the mutation tests use it on altered copies). Every ``check_*``
function returns a list of human-readable problems: empty means the check passed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import tree_sitter
import tree_sitter_bicep

LANGUAGE = tree_sitter.Language(tree_sitter_bicep.language())

GUID_RE = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
UPPER_SNAKE_RE = re.compile(r"^[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*$")

Node = tree_sitter.Node


def _text(node: Node) -> str:
    return (node.text or b"").decode()


def string_value(node: Node | None) -> str | None:
    """The value of a plain string literal; None for anything else (interpolation too)."""
    if node is None or node.type != "string":
        return None
    parts = []
    for child in node.named_children:
        if child.type == "string_content":
            parts.append(_text(child))
        elif child.type == "escape_sequence":
            parts.append(_text(child)[1:])
        else:
            return None
    return "".join(parts)


def bool_value(node: Node | None) -> bool | None:
    if node is not None and node.type == "boolean":
        return _text(node) == "true"
    return None


def object_properties(node: Node | None) -> dict[str, Node]:
    """Key -> value node of an object literal (keys unquoted)."""
    props: dict[str, Node] = {}
    if node is None or node.type != "object":
        return props
    for prop in node.named_children:
        if prop.type != "object_property" or prop.named_child_count < 2:
            continue
        key_node, value = prop.named_children[0], prop.named_children[-1]
        key = string_value(key_node) if key_node.type == "string" else _text(key_node)
        if key is not None:
            props[key] = value
    return props


def get_path(node: Node | None, *keys: str) -> Node | None:
    for key in keys:
        node = object_properties(node).get(key)
        if node is None:
            return None
    return node


def array_items(node: Node | None) -> list[Node]:
    if node is None or node.type != "array":
        return []
    return [child for child in node.named_children if child.type != "comment"]


def walk(node: Node) -> Iterator[Node]:
    yield node
    for child in node.children:
        yield from walk(child)


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    decorators: tuple[str, ...]  # decorator function names: description, allowed, ...
    line: int


@dataclass(frozen=True)
class Resource:
    symbol: str
    type: str
    api_version: str
    existing: bool
    body: Node | None
    line: int


@dataclass(frozen=True)
class Output:
    name: str
    line: int
    value: Node | None


@dataclass(frozen=True)
class RoleAssignment:
    file: str
    symbol: str
    role_ids: frozenset[str]
    scope_symbol: str | None
    scope_type: str | None  # resource type of the scope, None = deployment scope
    name_is_guid: bool
    line: int


@dataclass
class BicepFile:
    path: str  # relative to infra/, e.g. "modules/storage.bicep"
    text: str
    tree: tree_sitter.Tree = field(repr=False)

    @classmethod
    def parse(cls, path: str, text: str) -> BicepFile:
        parser = tree_sitter.Parser(LANGUAGE)
        return cls(path, text, parser.parse(text.encode()))

    @property
    def root(self) -> Node:
        return self.tree.root_node

    def _declarations(self) -> Iterator[tuple[list[str], Node]]:
        """Top-level declarations with the decorator names just before them."""
        pending: list[str] = []
        for child in self.root.children:
            if child.type == "decorators":
                pending = []
                for dec in child.named_children:
                    call = dec.named_children[0] if dec.named_child_count else None
                    target = call.child_by_field_name("function") if call is not None else None
                    pending.append(_text(target) if target is not None else _text(dec))
                continue
            if child.type == "comment":
                continue
            yield pending, child
            pending = []

    @property
    def params(self) -> dict[str, Param]:
        out = {}
        for decorators, node in self._declarations():
            if node.type == "parameter_declaration":
                ident = node.named_children[0]
                type_node = node.named_children[1] if node.named_child_count > 1 else None
                out[_text(ident)] = Param(
                    _text(ident),
                    _text(type_node) if type_node is not None else "",
                    tuple(decorators),
                    node.start_point[0] + 1,
                )
        return out

    @property
    def variables(self) -> dict[str, Node]:
        out = {}
        for child in self.root.children:
            if child.type == "variable_declaration":
                out[_text(child.named_children[0])] = child.named_children[-1]
        return out

    def variable_comment(self, name: str) -> str | None:
        """The comment line directly above ``var name`` (None when there is none)."""
        previous: Node | None = None
        for child in self.root.children:
            if child.type == "variable_declaration" and _text(child.named_children[0]) == name:
                if (
                    previous is not None
                    and previous.type == "comment"
                    and previous.end_point[0] + 1 == child.start_point[0]
                ):
                    return _text(previous)
                return None
            previous = child
        return None

    @property
    def resources(self) -> list[Resource]:
        out = []
        for child in self.root.children:
            if child.type != "resource_declaration":
                continue
            symbol = _text(child.named_children[0])
            type_string = string_value(child.named_children[1]) or ""
            rtype, _, version = type_string.partition("@")
            existing = any(c.type == "existing" for c in child.children)
            out.append(
                Resource(
                    symbol,
                    rtype,
                    version,
                    existing,
                    _declaration_body(child),
                    child.start_point[0] + 1,
                )
            )
        return out

    @property
    def modules(self) -> dict[str, tuple[str, Node | None]]:
        """symbol -> (relative path, body)."""
        out = {}
        for child in self.root.children:
            if child.type == "module_declaration":
                out[_text(child.named_children[0])] = (
                    string_value(child.named_children[1]) or "",
                    _declaration_body(child),
                )
        return out

    @property
    def outputs(self) -> list[Output]:
        out = []
        for child in self.root.children:
            if child.type == "output_declaration":
                value = child.named_children[-1] if child.named_child_count > 2 else None
                out.append(Output(_text(child.named_children[0]), child.start_point[0] + 1, value))
        return out

    def resource(self, symbol: str) -> Resource | None:
        return next((r for r in self.resources if r.symbol == symbol), None)

    def code_text(self) -> str:
        """The file's text with comments blanked out."""
        text = bytearray(self.text.encode())
        for node in walk(self.root):
            if node.type == "comment":
                text[node.start_byte : node.end_byte] = b" " * (node.end_byte - node.start_byte)
        return text.decode()

    def syntax_errors(self) -> list[str]:
        problems = []
        for node in walk(self.root):
            if node.type == "ERROR" or node.is_missing:
                line, col = node.start_point
                kind = "missing " + node.type if node.is_missing else "syntax error"
                snippet = _text(node)[:60].replace("\n", " ")
                problems.append(f"{self.path}:{line + 1}:{col + 1}: {kind} near {snippet!r}")
        return problems

    def app_settings(self) -> dict[str, Node]:
        """Setting name -> value node from every Microsoft.Web/sites siteConfig.appSettings."""
        out: dict[str, Node] = {}
        for res in self.resources:
            if res.type != "Microsoft.Web/sites" or res.existing:
                continue
            items = array_items(get_path(res.body, "properties", "siteConfig", "appSettings"))
            for item in items:
                props = object_properties(item)
                name = string_value(props.get("name"))
                if name is not None and "value" in props:
                    out[name] = props["value"]
        return out

    def guid_constants(self, node: Node) -> set[str]:
        """GUIDs in ``node``: literals, and variables it references that hold one."""
        found = set(GUID_RE.findall(_text(node)))
        variables = self.variables
        for sub in walk(node):
            if sub.type == "identifier" and _text(sub) in variables:
                value = string_value(variables[_text(sub)])
                if value and GUID_RE.fullmatch(value):
                    found.add(value.lower())
        return {g.lower() for g in found}

    def role_assignments(self) -> list[RoleAssignment]:
        out = []
        for res in self.resources:
            if res.type != "Microsoft.Authorization/roleAssignments" or res.existing:
                continue
            props = object_properties(res.body)
            role_node = get_path(res.body, "properties", "roleDefinitionId")
            role_ids = frozenset(self.guid_constants(role_node)) if role_node else frozenset()
            scope_node = props.get("scope")
            scope_symbol = _text(scope_node) if scope_node is not None else None
            scope_res = self.resource(scope_symbol) if scope_symbol else None
            name_node = props.get("name")
            name_is_guid = (
                name_node is not None
                and name_node.type == "call_expression"
                and _text(name_node).startswith("guid(")
            )
            out.append(
                RoleAssignment(
                    self.path,
                    res.symbol,
                    role_ids,
                    scope_symbol,
                    scope_res.type if scope_res else None,
                    name_is_guid,
                    res.line,
                )
            )
        return out


def _declaration_body(node: Node) -> Node | None:
    """The object of a resource/module declaration, through ``if`` and ``for`` forms."""
    for child in node.named_children[2:]:
        if child.type == "object":
            return child
        if child.type in ("if_statement", "for_statement"):
            for sub in child.named_children:
                if sub.type == "object":
                    return sub
                if sub.type == "if_statement":  # [for ...: if (...) {...}]
                    return next((s for s in sub.named_children if s.type == "object"), None)
    return None


@dataclass
class Infra:
    files: dict[str, BicepFile]

    @classmethod
    def from_texts(cls, texts: Mapping[str, str]) -> Infra:
        return cls({path: BicepFile.parse(path, text) for path, text in texts.items()})

    @classmethod
    def read_texts(cls, root: Path) -> dict[str, str]:
        paths = [root / "main.bicep", *sorted((root / "modules").glob("*.bicep"))]
        return {p.relative_to(root).as_posix(): p.read_text() for p in paths}

    @classmethod
    def load(cls, root: Path) -> Infra:
        return cls.from_texts(cls.read_texts(root))

    @property
    def main(self) -> BicepFile:
        return self.files["main.bicep"]

    def __iter__(self) -> Iterator[BicepFile]:
        return iter(self.files.values())

    def resources(self) -> Iterator[tuple[BicepFile, Resource]]:
        for f in self:
            for r in f.resources:
                yield f, r

    def app_settings(self) -> dict[str, Node]:
        out: dict[str, Node] = {}
        for f in self:
            out.update(f.app_settings())
        return out

    def role_assignments(self) -> list[RoleAssignment]:
        return [ra for f in self for ra in f.role_assignments()]


# ============================================================================ checks


def check_syntax(infra: Infra) -> list[str]:
    return [p for f in infra for p in f.syntax_errors()]


def load_allowed_api_versions(path: Path) -> set[str]:
    """``type@version`` lines of the allow-list (``#`` starts a comment)."""
    allowed = set()
    for line in path.read_text().splitlines():
        entry = line.split("#", 1)[0].strip()
        if entry:
            allowed.add(entry.lower())
    return allowed


def check_api_versions(infra: Infra, allowed: set[str]) -> list[str]:
    problems = []
    for f, res in infra.resources():
        key = f"{res.type}@{res.api_version}".lower()
        if not res.api_version:
            problems.append(f"{f.path}:{res.line}: {res.symbol} has no API version")
        elif key not in allowed:
            problems.append(
                f"{f.path}:{res.line}: {res.symbol} uses {res.type}@{res.api_version}, "
                "which is not in the allow-list of real API versions"
            )
    return problems


def check_module_paths(infra: Infra) -> list[str]:
    """Every module path resolves to a parsed file."""
    problems = []
    for f in infra:
        base = Path(f.path).parent
        for symbol, (rel, _) in f.modules.items():
            target = (base / rel).as_posix()
            if target not in infra.files:
                problems.append(f"{f.path}: module {symbol} points at missing {rel}")
    return problems


def check_module_params(infra: Infra) -> list[str]:
    """Every module call passes only declared params and every param without default."""
    problems = []
    for f in infra:
        base = Path(f.path).parent
        for symbol, (rel, body) in f.modules.items():
            target = infra.files.get((base / rel).as_posix())
            if target is None:
                continue
            passed = set(object_properties(get_path(body, "params")))
            declared = target.params
            for name in sorted(passed - set(declared)):
                problems.append(f"{f.path}: module {symbol} passes unknown param {name}")
            required = {
                name
                for name, node in _param_nodes(target).items()
                if not any(c.type == "=" for c in node.children)
            }
            for name in sorted(required - passed):
                problems.append(f"{f.path}: module {symbol} does not pass required param {name}")
    return problems


def _param_nodes(f: BicepFile) -> dict[str, Node]:
    return {
        _text(c.named_children[0]): c for c in f.root.children if c.type == "parameter_declaration"
    }


def check_conventions(infra: Infra) -> list[str]:
    """@description on every parameter, UPPER_SNAKE outputs, a uniqueString resource token."""
    problems = []
    for f in infra:
        for param in f.params.values():
            if "description" not in param.decorators:
                problems.append(f"{f.path}:{param.line}: param {param.name} has no @description")
        for output in f.outputs:
            if not UPPER_SNAKE_RE.match(output.name):
                problems.append(f"{f.path}:{output.line}: output {output.name} is not UPPER_SNAKE")
    token = infra.main.variables.get("resourceToken")
    if token is None or "uniqueString(" not in _text(token):
        problems.append("main.bicep: var resourceToken = ...uniqueString(...) is missing")
    if "targetScope = 'subscription'" not in infra.main.code_text():
        problems.append("main.bicep: targetScope must be 'subscription'")
    return problems


#: Text that means a key, a connection string with a key, or a call that reads one.
SECRET_PATTERNS = (
    re.compile(r"\blist[A-Za-z]*Keys?\s*\(", re.IGNORECASE),  # listKeys(, listAccountSas( ...
    re.compile(
        r"\blist(?:ConnectionStrings|Credentials?|Secrets?|AccountSas|ServiceSas)\s*\(", re.I
    ),
    re.compile(r"AccountKey\s*=", re.IGNORECASE),
    re.compile(r"SharedAccessKey", re.IGNORECASE),
    re.compile(r"SharedAccessSignature", re.IGNORECASE),
    re.compile(r"\.(?:primary|secondary)(?:Key|ConnectionString|MasterKey)\b", re.IGNORECASE),
    re.compile(r"\bgetSecret\s*\(", re.IGNORECASE),
)


def check_no_secrets(infra: Infra) -> list[str]:
    problems = []
    for f in infra:
        code = f.code_text()
        for pattern in SECRET_PATTERNS:
            for match in pattern.finditer(code):
                line = code.count("\n", 0, match.start()) + 1
                problems.append(f"{f.path}:{line}: secret material: {match.group(0)!r}")
    # A setting that holds a key could also arrive through a param: no @secure() values
    # and no setting whose name says it is a key or password.
    for name in infra.app_settings():
        if re.search(r"(KEY|PASSWORD|SECRET|PIN)$", name.split("__")[0]) and not name.endswith(
            ("_KEY_ID", "_KEY_BACKEND")
        ):
            problems.append(f"app setting {name} names a secret")
    return problems


TLS_PROPERTIES = {"minimumTlsVersion", "minTlsVersion"}
TLS_OK = {"TLS1_2", "TLS1_3", "1.2", "1.3"}


def check_tls(infra: Infra) -> list[str]:
    """Every TLS minimum in the templates is 1.2 or newer, and every storage account has one."""
    problems = []
    for f in infra:
        for node in walk(f.root):
            if node.type != "object_property" or node.named_child_count < 2:
                continue
            key = _text(node.named_children[0])
            if key in TLS_PROPERTIES:
                value = string_value(node.named_children[-1])
                if value not in TLS_OK:
                    line = node.start_point[0] + 1
                    problems.append(f"{f.path}:{line}: {key} is {_text(node.named_children[-1])}")
    for f, res in infra.resources():
        if res.type == "Microsoft.Storage/storageAccounts" and not res.existing:
            if string_value(get_path(res.body, "properties", "minimumTlsVersion")) is None:
                problems.append(f"{f.path}:{res.line}: {res.symbol} sets no minimumTlsVersion")
    return problems


#: Files whose storage account may allow anonymous blob reads (the public PKI account).
PUBLIC_BLOB_FILES = frozenset({"modules/pki.bicep"})


def check_storage(infra: Infra) -> list[str]:
    problems = []
    for f, res in infra.resources():
        if res.existing:
            continue
        if res.type == "Microsoft.Storage/storageAccounts":
            props = get_path(res.body, "properties")
            where = f"{f.path}:{res.line}: {res.symbol}"
            if bool_value(get_path(props, "allowSharedKeyAccess")) is not False:
                problems.append(f"{where}: allowSharedKeyAccess must be false")
            if bool_value(get_path(props, "supportsHttpsTrafficOnly")) is not True:
                problems.append(f"{where}: supportsHttpsTrafficOnly must be true")
            public = bool_value(get_path(props, "allowBlobPublicAccess"))
            if public is not False and f.path not in PUBLIC_BLOB_FILES:
                problems.append(f"{where}: allowBlobPublicAccess must be false")
            if public is not False and f.path in PUBLIC_BLOB_FILES:
                data_services = (
                    "Microsoft.Storage/storageAccounts/queueServices",
                    "Microsoft.Storage/storageAccounts/tableServices",
                )
                if any(other.type.startswith(data_services) for other in f.resources):
                    problems.append(
                        f"{where}: the public PKI account must hold no queues or tables"
                    )
        if res.type == "Microsoft.Storage/storageAccounts/blobServices/containers":
            access = string_value(get_path(res.body, "properties", "publicAccess")) or "None"
            if access == "Container":
                problems.append(f"{f.path}:{res.line}: {res.symbol} allows anonymous listing")
            if access != "None" and f.path not in PUBLIC_BLOB_FILES:
                problems.append(f"{f.path}:{res.line}: {res.symbol} is public outside the PKI")
    return problems


def check_public_network_access(infra: Infra) -> list[str]:
    """Every publicNetworkAccess follows a parameter with an @allowed list, never a literal."""
    problems = []
    for f in infra:
        params = f.params
        for node in walk(f.root):
            if node.type != "object_property" or node.named_child_count < 2:
                continue
            if _text(node.named_children[0]) != "publicNetworkAccess":
                continue
            value = node.named_children[-1]
            line = node.start_point[0] + 1
            if value.type != "identifier" or _text(value) not in params:
                problems.append(
                    f"{f.path}:{line}: publicNetworkAccess is {_text(value)!r}, not a parameter"
                )
            elif "allowed" not in params[_text(value)].decorators:
                problems.append(f"{f.path}:{line}: param {_text(value)} has no @allowed list")
    for f, res in infra.resources():
        if res.existing or res.type not in PUBLIC_NETWORK_TYPES:
            continue
        if get_path(res.body, "properties", "publicNetworkAccess") is None:
            problems.append(f"{f.path}:{res.line}: {res.symbol} leaves publicNetworkAccess unset")
    return problems


PUBLIC_NETWORK_TYPES = frozenset(
    {
        "Microsoft.Storage/storageAccounts",
        "Microsoft.KeyVault/vaults",
        "Microsoft.EventHub/namespaces",
        "Microsoft.EventGrid/topics",
        "Microsoft.Devices/IotHubs",
        "Microsoft.Devices/provisioningServices",
        "Microsoft.Web/sites",
    }
)


# --------------------------------------------------------------------------- roles

#: Built-in role definition ids (Azure built-in roles,
#: https://learn.microsoft.com/azure/role-based-access-control/built-in-roles).
OWNER = "8e3af657-a8ff-443c-a75c-2fe8c4bcb635"
CONTRIBUTOR = "b24988ac-6180-42a0-ab88-20f7382dd24c"
USER_ACCESS_ADMINISTRATOR = "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9"
ROLE_BASED_ACCESS_CONTROL_ADMINISTRATOR = "f58310d9-a9f6-439a-9e8d-f62e7b41a168"
KEY_VAULT_ADMINISTRATOR = "00482a5a-887f-4fb3-b363-3b7fe8e74483"
KEY_VAULT_CRYPTO_OFFICER = "14b46e9e-c2b7-41b4-b07b-48a6ebf60603"
STORAGE_ACCOUNT_CONTRIBUTOR = "17d1049b-9a84-46fb-8f53-869881c3d3ab"
EVENT_HUBS_DATA_OWNER = "f526a384-b230-433a-b45c-95f59c4a2dec"

FORBIDDEN_ROLES = {
    OWNER: "Owner",
    CONTRIBUTOR: "Contributor",
    USER_ACCESS_ADMINISTRATOR: "User Access Administrator",
    ROLE_BASED_ACCESS_CONTROL_ADMINISTRATOR: "Role Based Access Control Administrator",
    KEY_VAULT_ADMINISTRATOR: "Key Vault Administrator",
    KEY_VAULT_CRYPTO_OFFICER: "Key Vault Crypto Officer",
    STORAGE_ACCOUNT_CONTRIBUTOR: "Storage Account Contributor",
    EVENT_HUBS_DATA_OWNER: "Azure Event Hubs Data Owner",
}


@dataclass(frozen=True)
class RoleNeed:
    name: str
    why: str
    scopes: frozenset[str]  # resource types the assignment may be scoped to


#: The roles certroll's operations need, each with the narrowest scopes allowed.
ROLE_NEEDS: dict[str, RoleNeed] = {
    "12338af0-0e69-4776-bea7-57ae8d297424": RoleNeed(
        "Key Vault Crypto User",
        "sign with the issuing key",
        frozenset({"Microsoft.KeyVault/vaults/keys"}),
    ),
    "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": RoleNeed(
        "Storage Blob Data Owner",
        "Functions host storage and the deployment package",
        frozenset({"Microsoft.Storage/storageAccounts"}),
    ),
    "974c5e8b-45b9-4653-ba55-5f855dd0fb88": RoleNeed(
        "Storage Queue Data Contributor",
        "rotation work queue (trigger and fan-out)",
        frozenset({"Microsoft.Storage/storageAccounts"}),
    ),
    "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3": RoleNeed(
        "Storage Table Data Contributor",
        "rotation state, issuance ledger, audit log",
        frozenset({"Microsoft.Storage/storageAccounts"}),
    ),
    "ba92f5b4-2d11-453d-a403-e96b0029c9fe": RoleNeed(
        "Storage Blob Data Contributor",
        "publish the CRL and CA chain",
        frozenset({"Microsoft.Storage/storageAccounts/blobServices/containers"}),
    ),
    "dfce44e4-17b7-4bd1-a6d1-04996ec95633": RoleNeed(
        "Device Provisioning Service Data Contributor",
        "enrollment slots, groups, registration states",
        frozenset({"Microsoft.Devices/provisioningServices"}),
    ),
    "4fc6c259-987e-4a07-842e-c321cc9d413f": RoleNeed(
        "IoT Hub Data Contributor",
        "identities, twins, direct methods, jobs",
        frozenset({"Microsoft.Devices/IotHubs"}),
    ),
    "a638d3c7-ab3a-418d-83e6-5f17a39d4fde": RoleNeed(
        "Azure Event Hubs Data Receiver",
        "twin_changes and connection_failures triggers",
        frozenset({"Microsoft.EventHub/namespaces/eventhubs", "Microsoft.EventHub/namespaces"}),
    ),
    "2b629674-e913-4c01-ae53-ef4638d8f975": RoleNeed(
        "Azure Event Hubs Data Sender",
        "IoT Hub routing endpoint for TwinChangeEvents",
        frozenset({"Microsoft.EventHub/namespaces/eventhubs"}),
    ),
    "d5a91429-5739-47e2-a06b-3470a27159e7": RoleNeed(
        "EventGrid Data Sender",
        "publish certroll's domain events",
        frozenset({"Microsoft.EventGrid/topics"}),
    ),
    "3913510d-42f4-4e42-8a64-420c390055eb": RoleNeed(
        "Monitoring Metrics Publisher",
        "Entra ID telemetry ingestion",
        frozenset({"Microsoft.Insights/components"}),
    ),
}


def check_roles(infra: Infra, needs: Mapping[str, RoleNeed] = ROLE_NEEDS) -> list[str]:
    problems = []
    for f in infra:
        for guid in set(GUID_RE.findall(f.text)):
            if guid.lower() in FORBIDDEN_ROLES:
                problems.append(f"{f.path}: role {FORBIDDEN_ROLES[guid.lower()]} ({guid}) appears")
    assigned: set[str] = set()
    for ra in infra.role_assignments():
        where = f"{ra.file}:{ra.line}: {ra.symbol}"
        if not ra.name_is_guid:
            problems.append(f"{where}: name must be guid(...)")
        if len(ra.role_ids) != 1:
            problems.append(
                f"{where}: expected one role definition id, found {sorted(ra.role_ids)}"
            )
        for role_id in ra.role_ids:
            need = needs.get(role_id)
            if need is None:
                label = FORBIDDEN_ROLES.get(role_id, role_id)
                problems.append(f"{where}: role {label} is not one certroll needs")
                continue
            assigned.add(role_id)
            if ra.scope_type is None:
                problems.append(
                    f"{where}: {need.name} has no resource scope (resource group or wider)"
                )
            elif ra.scope_type not in need.scopes:
                allowed = sorted(need.scopes)
                problems.append(
                    f"{where}: {need.name} scoped to {ra.scope_type}; allowed: {allowed}"
                )
    for role_id, need in needs.items():
        if role_id not in assigned:
            problems.append(f"role {need.name} ({need.why}) is never assigned")
    for f in infra:
        for name, value in f.variables.items():
            literal = string_value(value)
            if literal and GUID_RE.fullmatch(literal) and f.variable_comment(name) is None:
                problems.append(f"{f.path}: role id variable {name} has no comment naming the role")
    return problems


# --------------------------------------------------------------------------- settings


def base_name(setting: str) -> str:
    """``CERTROLL_STORAGE__queueServiceUri`` -> ``CERTROLL_STORAGE``."""
    return setting.split("__", 1)[0]


def is_provided(name: str, settings: Iterable[str], *, connection: bool = False) -> bool:
    """A plain setting needs its exact name; a connection also accepts NAME__<suffix>."""
    names = set(settings)
    if name in names:
        return True
    return connection and any(s.startswith(name + "__") for s in names)


PERCENT_RE = re.compile(r"%([A-Za-z0-9_]+)%")


@dataclass(frozen=True)
class BindingNeeds:
    connections: frozenset[str]
    expressions: frozenset[str]
    consumer_groups: frozenset[str]
    functions: frozenset[str]


def binding_needs(functions: Iterable[object]) -> BindingNeeds:
    """Setting names the indexed functions' bindings read (``app.get_functions()``)."""
    connections, expressions, groups, names = set(), set(), set(), set()
    for fn in functions:
        names.add(fn.get_function_name())  # type: ignore[attr-defined]
        for binding in fn.get_bindings():  # type: ignore[attr-defined]
            spec = binding.get_dict_repr()
            if spec.get("connection"):
                connections.add(str(spec["connection"]))
            if spec.get("consumerGroup"):
                groups.add(str(spec["consumerGroup"]))
            for value in spec.values():
                if isinstance(value, str):
                    expressions.update(PERCENT_RE.findall(value))
    return BindingNeeds(
        frozenset(connections), frozenset(expressions), frozenset(groups), frozenset(names)
    )


def check_settings(
    settings: Iterable[str], needs: BindingNeeds, required: Iterable[str], known: Iterable[str]
) -> list[str]:
    names = set(settings)
    problems = []
    for conn in sorted(needs.connections | {"AzureWebJobsStorage"}):
        if not is_provided(conn, names, connection=True):
            problems.append(f"connection {conn} (or {conn}__*) is not set by infra")
    for expr in sorted(needs.expressions):
        if not is_provided(expr, names):
            problems.append(f"binding expression %{expr}% has no app setting")
    for name in sorted(set(required)):
        if not is_provided(name, names, connection=True):
            problems.append(f"setting {name} is not set by infra")
    known_set = set(known) | needs.connections
    for name in sorted(names):
        if name.startswith("CERTROLL_") and base_name(name) not in known_set:
            problems.append(f"infra sets {name}, which certroll does not read")
    for forbidden in FLEX_FORBIDDEN_SETTINGS & names:
        problems.append(
            f"{forbidden} must not be set (Flex Consumption uses functionAppConfig; "
            "storage is identity-based)"
        )
    return problems


#: Flex Consumption rejects these; functionAppConfig.runtime replaces them.
FLEX_FORBIDDEN_SETTINGS = frozenset(
    {
        "FUNCTIONS_WORKER_RUNTIME",
        "FUNCTIONS_EXTENSION_VERSION",
        "WEBSITE_RUN_FROM_PACKAGE",
        "AzureWebJobsStorage",
        "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
    }
)


# --------------------------------------------------------------------------- resource types

#: Microsoft's generated Bicep resource types (bicep-types-az ``types.json``), copied
#: unchanged into the repository so the check runs on a clean clone.
TYPES_DIR = Path(__file__).with_name("bicep-types")

#: Keys Bicep itself adds to every resource declaration; they are not resource properties.
BICEP_RESOURCE_KEYWORDS = frozenset({"parent", "scope", "dependsOn"})

#: Property flags of bicep-types (``TypePropertyFlags``).
FLAG_REQUIRED = 1
FLAG_READ_ONLY = 2

TypeNode = dict[str, object]


@dataclass
class TypeLibrary:
    """Resource types by ``type@version`` (lower case), each with its file's node list."""

    resources: dict[str, tuple[list[TypeNode], TypeNode]]

    @classmethod
    def load(cls, root: Path = TYPES_DIR) -> TypeLibrary:
        import json

        resources: dict[str, tuple[list[TypeNode], TypeNode]] = {}
        for path in sorted(root.rglob("types.json")):
            nodes = json.loads(path.read_text())
            for node in nodes:
                if node.get("$type") == "ResourceType":
                    resources[str(node["name"]).lower()] = (nodes, node)
        return cls(resources)


def _deref(nodes: list[TypeNode], ref: object) -> TypeNode:
    target = str(ref["$ref"]) if isinstance(ref, dict) else str(ref)  # "#/12"
    return nodes[int(target.rsplit("/", 1)[1])]


def _allowed_values(f: BicepFile, name: str) -> list[str] | None:
    """String values of ``@allowed([...])`` on ``param name`` (None: no such list)."""
    decorators: list[Node] = []
    for child in f.root.children:
        if child.type == "decorators":
            decorators = list(child.named_children)
            continue
        if child.type == "comment":
            continue
        if child.type == "parameter_declaration" and _text(child.named_children[0]) == name:
            for dec in decorators:
                call = dec.named_children[0] if dec.named_child_count else None
                fn = call.child_by_field_name("function") if call is not None else None
                if fn is None or _text(fn) != "allowed":
                    continue
                args = call.child_by_field_name("arguments") if call is not None else None
                array = next(
                    (a for a in (args.named_children if args else []) if a.type == "array"), None
                )
                values = [string_value(item) for item in array_items(array)]
                return [v for v in values if v is not None]
            return None
        decorators = []
    return None


class _TypeChecker:
    def __init__(self, f: BicepFile, nodes: list[TypeNode], where: str) -> None:
        self.f = f
        self.nodes = nodes
        self.where = where
        self.problems: list[str] = []
        self._variables = f.variables

    def report(self, node: Node, message: str) -> None:
        self.problems.append(f"{self.f.path}:{node.start_point[0] + 1}: {self.where}: {message}")

    # Values --------------------------------------------------------------------------
    def value(self, node: Node, typ: TypeNode, path: str) -> None:
        kind = node.type
        if kind == "parenthesized_expression" and node.named_child_count:
            self.value(node.named_children[0], typ, path)
        elif kind == "ternary_expression":
            for branch in node.named_children[1:]:
                self.value(branch, typ, path)
        elif kind == "identifier" and _text(node) in self._variables:
            self.value(self._variables[_text(node)], typ, path)
        elif kind == "identifier":
            allowed = _allowed_values(self.f, _text(node))
            for literal in allowed or []:
                self.literal(node, literal, typ, f"{path} (param {_text(node)} allows it)")
        elif kind == "string":
            literal = string_value(node)
            if literal is not None:
                self.literal(node, literal, typ, path)
        elif kind == "object":
            self.object(node, typ, path)
        elif kind == "array":
            self.array(node, typ, path)
        elif kind == "for_statement":
            body = next((c for c in node.named_children if c.type in ("object", "array")), None)
            if body is not None:
                self.value(body, typ, path)

    def literal(self, node: Node, literal: str, typ: TypeNode, path: str) -> None:
        options = self._string_options(typ)
        if options is not None and literal not in options:
            self.report(node, f"{path} = {literal!r} is not one of {sorted(options)}")

    def _string_options(self, typ: TypeNode) -> set[str] | None:
        """Allowed string literals of a type; None when any string (or a non-string) fits."""
        kind = typ.get("$type")
        if kind == "StringLiteralType":
            return {str(typ["value"])}
        if kind == "UnionType":
            # Microsoft's extensible enums ("modelAsString") are a union of their known
            # literals and StringType: a value outside the known literals is reported
            # too, since certroll only ever means one of the documented values.
            options: set[str] = set()
            open_string = False
            for element in typ["elements"]:  # type: ignore[attr-defined]
                sub = self._string_options(_deref(self.nodes, element))
                if sub is None:
                    open_string = True
                else:
                    options |= sub
            return options or (None if open_string else set())
        return None

    def object(
        self, node: Node, typ: TypeNode, path: str, extra: frozenset[str] = frozenset()
    ) -> None:
        kind = typ.get("$type")
        if kind == "UnionType":
            candidates = [
                _deref(self.nodes, e)
                for e in typ["elements"]  # type: ignore[attr-defined]
            ]
            objects = [
                c for c in candidates if c.get("$type") in ("ObjectType", "DiscriminatedObjectType")
            ]
            if not objects:
                return
            best: list[str] | None = None
            for candidate in objects:
                probe = _TypeChecker(self.f, self.nodes, self.where)
                probe.object(node, candidate, path, extra)
                if best is None or len(probe.problems) < len(best):
                    best = probe.problems
            self.problems.extend(best or [])
            return
        if kind == "AnyType":
            return
        properties, additional = self._object_shape(node, typ, path)
        if properties is None:
            return
        for prop in node.named_children:
            if prop.type != "object_property" or prop.named_child_count < 2:
                continue
            key_node, value = prop.named_children[0], prop.named_children[-1]
            key = string_value(key_node) if key_node.type == "string" else _text(key_node)
            if key is None or key in extra:
                continue
            child_path = f"{path}.{key}" if path else key
            spec = properties.get(key)
            if spec is not None and spec.get("type") is None:
                continue  # a discriminator whose value is not a literal
            if spec is None:
                if additional is None:
                    self.report(
                        key_node,
                        f"{child_path} is not a property of {typ.get('name', 'this object')}",
                    )
                else:
                    self.value(value, _deref(self.nodes, additional), child_path)
                continue
            flags = int(spec.get("flags", 0))  # type: ignore[call-overload]
            if flags & FLAG_READ_ONLY and not flags & FLAG_REQUIRED:
                self.report(key_node, f"{child_path} is read-only")
            self.value(value, _deref(self.nodes, spec["type"]), child_path)

    def _object_shape(
        self, node: Node, typ: TypeNode, path: str
    ) -> tuple[dict[str, TypeNode] | None, object | None]:
        kind = typ.get("$type")
        if kind == "ObjectType":
            return dict(typ.get("properties") or {}), typ.get("additionalProperties")  # type: ignore[call-overload]
        if kind != "DiscriminatedObjectType":
            return None, None
        discriminator = str(typ["discriminator"])
        base = dict(typ.get("baseProperties") or {})  # type: ignore[call-overload]
        elements: dict[str, object] = dict(typ["elements"])  # type: ignore[call-overload]
        chosen = string_value(object_properties(node).get(discriminator))
        if chosen is None:
            # Not a literal: every variant's properties are possible.
            merged = dict(base)
            for ref in elements.values():
                merged.update(_deref(self.nodes, ref).get("properties") or {})  # type: ignore[call-overload]
            merged[discriminator] = {"type": None, "flags": FLAG_REQUIRED}
            return merged, None
        if chosen not in elements:
            self.report(
                node, f"{path}.{discriminator} = {chosen!r} is not one of {sorted(elements)}"
            )
            return None, None
        variant = _deref(self.nodes, elements[chosen])
        merged = {**base, **dict(variant.get("properties") or {})}  # type: ignore[call-overload]
        return merged, None

    def array(self, node: Node, typ: TypeNode, path: str) -> None:
        if typ.get("$type") != "ArrayType":
            return
        item_type = _deref(self.nodes, typ["itemType"])
        for item in array_items(node):
            self.value(item, item_type, f"{path}[]")


def check_resource_types(infra: Infra, library: TypeLibrary) -> list[str]:
    """Every resource's type@version exists in Microsoft's generated types, and every
    property a template sets is defined there (name, nesting, allowed string values)."""
    problems = []
    for f, res in infra.resources():
        key = f"{res.type}@{res.api_version}".lower()
        found = library.resources.get(key)
        where = f"{res.symbol} ({res.type}@{res.api_version})"
        if found is None:
            problems.append(
                f"{f.path}:{res.line}: {where} is not in Microsoft's generated Bicep types"
            )
            continue
        if res.existing or res.body is None:
            continue
        nodes, resource_type = found
        checker = _TypeChecker(f, nodes, where)
        checker.object(res.body, _deref(nodes, resource_type["body"]), "", BICEP_RESOURCE_KEYWORDS)
        problems.extend(checker.problems)
    return problems


# --------------------------------------------------------------------------- alerts

#: What each alert rule must watch: rule name -> (metric the query reads, text the query
#: must hold). The metric names are the ones the app emits (docs/operations.md).
ALERT_NEEDS: dict[str, tuple[str, str]] = {
    "rotation-failures": ("certroll.rotations", '"failed"'),
    "renewal-deadline": ("certroll.devices_by_status", '"overdue"'),
    "ca-expiry": ("certroll.ca.days_to_expiry", "arg_max"),
    "throttle-storm": ("certroll.throttled", "service"),
    "poison-messages": ("certroll.work_messages_poisoned", "sum(valueSum)"),
}
_QUERY_METRIC_RE = re.compile(r'name\s*==\s*"([^"]+)"')


def _literal(node: Node | None) -> str | None:
    """A plain or multi-line (''') string literal's text."""
    value = string_value(node)
    if value is not None or node is None:
        return value
    text = _text(node)
    if text.startswith("'''") and text.endswith("'''"):
        return text[3:-3]
    return None


def alert_rules(infra: Infra) -> dict[str, dict[str, str]]:
    """The rules of ``var rules`` in modules/alerts.bicep: name -> property -> text."""
    f = infra.files.get("modules/alerts.bicep")
    if f is None:
        return {}
    out: dict[str, dict[str, str]] = {}
    for item in array_items(f.variables.get("rules")):
        props = {k: (_literal(v) or _text(v)) for k, v in object_properties(item).items()}
        out[props.get("name", "?")] = props
    return out


def check_alerts(infra: Infra, needs: Mapping[str, tuple[str, str]] = ALERT_NEEDS) -> list[str]:
    """An action group with e-mail and webhook receivers from parameters (the webhook
    @secure); one log alert rule per need, each reading its metric from customMetrics
    of the Application Insights resource and notifying the action group; the module
    called from main.bicep with that Application Insights resource."""
    problems: list[str] = []
    f = infra.files.get("modules/alerts.bicep")
    if f is None:
        return ["modules/alerts.bicep is missing"]
    groups = [r for r in f.resources if r.type.lower() == "microsoft.insights/actiongroups"]
    if len(groups) != 1:
        problems.append(f"alerts.bicep: expected one action group, found {len(groups)}")
    else:
        props = get_path(groups[0].body, "properties")
        if bool_value(get_path(props, "enabled")) is not True:
            problems.append("alerts.bicep: the action group is not enabled")
        email = _text(get_path(props, "emailReceivers")) if props else ""
        hook = _text(get_path(props, "webhookReceivers")) if props else ""
        if "alertEmailAddresses" not in email:
            problems.append("alerts.bicep: e-mail receivers do not come from alertEmailAddresses")
        if "alertWebhookUrl" not in hook:
            problems.append("alerts.bicep: the webhook receiver does not come from alertWebhookUrl")
    webhook = f.params.get("alertWebhookUrl")
    if webhook is None or "secure" not in webhook.decorators:
        problems.append("alerts.bicep: param alertWebhookUrl must be @secure()")
    rules = [r for r in f.resources if r.type.lower() == "microsoft.insights/scheduledqueryrules"]
    if len(rules) != 1:
        problems.append("alerts.bicep: expected one scheduledQueryRules declaration over var rules")
    else:
        props = get_path(rules[0].body, "properties")
        groups_text = _text(get_path(props, "actions", "actionGroups")) if props else ""
        scopes_text = _text(get_path(props, "scopes")) if props else ""
        if groups and f"{groups[0].symbol}.id" not in groups_text:
            problems.append("alerts.bicep: the alert rules do not notify the action group")
        insights = [r for r in f.resources if r.type.lower() == "microsoft.insights/components"]
        if not insights or f"{insights[0].symbol}.id" not in scopes_text:
            problems.append("alerts.bicep: the rules are not scoped to Application Insights")
        if string_value(get_path(rules[0].body, "kind")) != "LogAlert":
            problems.append("alerts.bicep: the rules must be kind LogAlert")
    declared = alert_rules(infra)
    for name, (metric, text) in needs.items():
        rule = declared.get(name)
        if rule is None:
            problems.append(f"alerts.bicep: no alert rule {name}")
            continue
        query = rule.get("query", "")
        if not query.lstrip().startswith("customMetrics"):
            problems.append(f"alert {name}: the query does not read customMetrics")
        if metric not in _QUERY_METRIC_RE.findall(query):
            problems.append(f"alert {name}: the query does not read {metric}")
        if text not in query:
            problems.append(f"alert {name}: the query lacks {text}")
        for key in ("measure", "dimension"):
            if rule.get(key) and not re.search(rf"\b{re.escape(rule[key])}\b", query):
                problems.append(f"alert {name}: {key} {rule[key]} is not a column of the query")
    called = [
        body
        for _, (rel, body) in infra.main.modules.items()
        if rel == "modules/alerts.bicep"
    ]
    if not called:
        problems.append("main.bicep does not call modules/alerts.bicep")
    elif "monitoring.outputs.APPLICATION_INSIGHTS_NAME" not in _text(
        get_path(called[0], "params", "applicationInsightsName") or called[0]
    ):
        problems.append("main.bicep: the alerts module does not query the app's App Insights")
    return problems
