"""Read `template.yaml` so the local server routes and provisions exactly as SAM would."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


class _TemplateLoader(yaml.SafeLoader):
    """A safe loader that reads CloudFormation short-form tags such as `!Ref`."""


def _construct_intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt" and isinstance(value, str):
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {name: value}


_TemplateLoader.add_multi_constructor("!", _construct_intrinsic)


class TemplateError(ValueError):
    """`template.yaml` lacks a resource or property the local server needs."""


@dataclass(frozen=True, slots=True)
class ApiRoute:
    """One API Gateway route and the function handler it invokes."""

    method: str
    path: str
    function: str
    code_dir: Path
    module: str
    handler: str
    # The event's `Auth.Authorizer`, such as `AWS_IAM`, or empty for a public route.
    authorizer: str = ""


def load_template(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as stream:
        data = yaml.load(stream, Loader=_TemplateLoader)  # noqa: S506 - a SafeLoader subclass
    if not isinstance(data, dict) or not isinstance(data.get("Resources"), dict):
        raise TemplateError(f"{path} has no Resources section")
    return data


def _resources_of_type(template: Mapping[str, Any], resource_type: str) -> dict[str, Any]:
    return {
        name: resource
        for name, resource in template["Resources"].items()
        if resource.get("Type") == resource_type
    }


def api_routes(template: Mapping[str, Any], root: Path) -> list[ApiRoute]:
    """List every `Api` event of every function, with the handler's file location."""
    routes = []
    for name, resource in _resources_of_type(template, "AWS::Serverless::Function").items():
        properties = resource.get("Properties", {})
        module, _, handler = str(properties.get("Handler", "")).rpartition(".")
        for event in (properties.get("Events") or {}).values():
            if event.get("Type") != "Api":
                continue
            auth = event["Properties"].get("Auth") or {}
            routes.append(
                ApiRoute(
                    method=str(event["Properties"]["Method"]).upper(),
                    path=str(event["Properties"]["Path"]),
                    function=name,
                    code_dir=root / str(properties["CodeUri"]),
                    module=module,
                    handler=handler,
                    authorizer=str(auth.get("Authorizer", "")),
                )
            )
    if not routes:
        raise TemplateError("template.yaml defines no API routes")
    return routes


def single_resource_properties(template: Mapping[str, Any], resource_type: str) -> dict[str, Any]:
    """Return the properties of the one resource of `resource_type`."""
    resources = _resources_of_type(template, resource_type)
    if len(resources) != 1:
        raise TemplateError(
            f"template.yaml must define exactly one {resource_type}, found {len(resources)}"
        )
    (resource,) = resources.values()
    return dict(resource.get("Properties", {}))


def resource_properties(template: Mapping[str, Any], logical_id: str) -> dict[str, Any]:
    """Return the properties of the resource named `logical_id`."""
    resource = template["Resources"].get(logical_id)
    if not isinstance(resource, Mapping):
        raise TemplateError(f"template.yaml defines no resource {logical_id}")
    return dict(resource.get("Properties", {}))
