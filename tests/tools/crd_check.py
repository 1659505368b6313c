#!/usr/bin/env python3
"""Independent check of AuthorizationPolicy objects against the CRD's OpenAPI v3
schema, with PyYAML and `jsonschema` (not airlock's own YAML or policy code).

    crd_check.py CRD OBJECTS -> validates each object of the JSON list in the file
                                OBJECTS against CRD's openAPIV3Schema; prints a JSON
                                list with, per object, null (valid) or the first error
"""
import json
import sys

import jsonschema
import yaml


def schema_of(crd_file):
    for document in yaml.safe_load_all(open(crd_file)):
        if document and document.get("kind") == "CustomResourceDefinition":
            return document["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    sys.exit(f"{crd_file}: no CustomResourceDefinition")


def closed(schema):
    """A structural schema prunes (or, with strict field validation, refuses) fields it
    does not declare; JSON Schema allows them unless told otherwise."""
    if isinstance(schema, dict):
        schema = {k: closed(v) for k, v in schema.items()}
        if schema.get("type") == "object" and "properties" in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema.setdefault("additionalProperties", False)
        return schema
    if isinstance(schema, list):
        return [closed(v) for v in schema]
    return schema


def main():
    crd_file, objects_file = sys.argv[1], sys.argv[2]
    schema = closed(schema_of(crd_file))
    # The API server checks metadata itself; the schema leaves it open.
    schema["properties"]["metadata"] = {"type": "object"}
    validator = jsonschema.Draft7Validator(schema, format_checker=jsonschema.FormatChecker())
    results = []
    for item in json.load(open(objects_file)):
        errors = sorted(validator.iter_errors(item), key=lambda e: list(e.absolute_path))
        if errors:
            error = errors[0]
            path = ".".join(str(p) for p in error.absolute_path)
            results.append(f"{path}: {error.message}")
        else:
            results.append(None)
    print(json.dumps(results))


main()
