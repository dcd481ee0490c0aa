#!/usr/bin/python3
"""The oracle of tests/integration/provision_corpus_test.cpp: cloud-init's
own verdict on user-data, as `cloud-init schema --config-file F` gives it
(cloudinit/config/schema.py of cloud-init 22.4, Debian 12), without
cloud-init installed: python3-yaml and python3-jsonschema only.

  corpus_oracle.py SCHEMA.json FILE...

prints one JSON object: {FILE: {"valid": bool, "errors": [...],
"deprecations": [...], "top": [[KEY, LINE, EMPTY], ...]}}: "top" lists the
top-level keys of a mapping with the line of each and whether its value
asks for nothing (null, false, "", [] or {}). What it repeats of schema.py:

  - validate_cloudconfig_file: the file must begin with b"#cloud-config";
    it is loaded with safeyaml.load (a yaml.SafeLoader that also takes
    !!python/unicode); a YAML error is an error, and so is a document that
    is not a mapping ("Cloud-config is not a YAML dict.");
  - get_jsonschema_validator: a Draft 4 validator made with
    jsonschema.validators.create whose "string" type takes bytes too
    (!!binary content), whose "deprecated" keyword yields a
    SchemaDeprecationError, and whose anyOf/oneOf treat those as no error
    (a deprecated alternative still matches); the schema's "$ref":
    "#/$defs/NAME" are JSON pointers into the schema itself, which the
    validator's resolver follows (the schema has no $id);
  - validate_cloudconfig_schema(strict=True): every error of iter_errors
    that is not a SchemaDeprecationError makes the file invalid; the
    deprecations are only reported (cloud-init prints them and still says
    "Valid cloud-config").
"""
import json
import sys
from copy import deepcopy

import yaml
from jsonschema import Draft4Validator, FormatChecker, ValidationError
from jsonschema.validators import create

CLOUD_CONFIG_HEADER = b"#cloud-config"
DEPRECATED_KEY = "deprecated"
DEPRECATED_PREFIX = "DEPRECATED: "


class SchemaDeprecationError(ValidationError):
    pass


class _CustomSafeLoader(yaml.SafeLoader):  # cloudinit.safeyaml
    def construct_python_unicode(self, node):
        return super().construct_scalar(node)


_CustomSafeLoader.add_constructor(
    "tag:yaml.org,2002:python/unicode", _CustomSafeLoader.construct_python_unicode
)


def is_schema_byte_string(checker, instance):
    return Draft4Validator.TYPE_CHECKER.is_type(instance, "string") or isinstance(instance, (bytes,))


def _add_deprecation_msg(description=None):
    if description:
        return f"{DEPRECATED_PREFIX}{description}"
    return DEPRECATED_PREFIX.replace(":", ".").strip()


def _validator_deprecated(_validator, deprecated, _instance, schema, error_type=SchemaDeprecationError):
    if deprecated:
        yield error_type(_add_deprecation_msg(schema.get("description")))


def _anyOf(validator, anyOf, instance, _schema, error_type=SchemaDeprecationError):
    all_errors = []
    all_deprecations = []
    for index, subschema in enumerate(anyOf):
        all_errs = list(validator.descend(instance, subschema, schema_path=index))
        errs = [e for e in all_errs if not isinstance(e, error_type)]
        deprecations = [e for e in all_errs if isinstance(e, error_type)]
        if not errs:
            all_deprecations.extend(deprecations)
            break
        all_errors.extend(errs)
    else:
        yield ValidationError("%r is not valid under any of the given schemas" % (instance,), context=all_errors)
    yield from all_deprecations


def _oneOf(validator, oneOf, instance, _schema, error_type=SchemaDeprecationError):
    subschemas = enumerate(oneOf)
    all_errors = []
    all_deprecations = []
    first_valid = None
    for index, subschema in subschemas:
        all_errs = list(validator.descend(instance, subschema, schema_path=index))
        errs = [e for e in all_errs if not isinstance(e, error_type)]
        deprecations = [e for e in all_errs if isinstance(e, error_type)]
        if not errs:
            first_valid = subschema
            all_deprecations.extend(deprecations)
            break
        all_errors.extend(errs)
    else:
        yield ValidationError("%r is not valid under any of the given schemas" % (instance,), context=all_errors)

    more_valid = [s for i, s in subschemas if validator.is_valid(instance, s)]
    if more_valid:
        more_valid.append(first_valid)
        reprs = ", ".join(repr(schema) for schema in more_valid)
        yield ValidationError("%r is valid under each of %s" % (instance, reprs))
    else:
        yield from all_deprecations


def cloudinit_validator():
    strict_metaschema = deepcopy(Draft4Validator.META_SCHEMA)
    strict_metaschema["additionalProperties"] = False
    strict_metaschema["properties"]["label"] = {"type": "string"}
    type_checker = Draft4Validator.TYPE_CHECKER.redefine("string", is_schema_byte_string)
    validators = dict(Draft4Validator.VALIDATORS)
    validators[DEPRECATED_KEY] = _validator_deprecated
    validators["oneOf"] = _oneOf
    validators["anyOf"] = _anyOf
    cls = create(meta_schema=strict_metaschema, validators=validators, version="draft4", type_checker=type_checker)

    def is_valid(self, instance, _schema=None, **__):
        # schema.py passes _schema to iter_errors; newer jsonschema wants evolve().
        target = self if _schema is None else self.evolve(schema=_schema)
        errors = filter(lambda e: not isinstance(e, SchemaDeprecationError), target.iter_errors(instance))
        return next(errors, None) is None

    cls.is_valid = is_valid
    return cls


def verdict(validator, path):
    with open(path, "rb") as f:
        content = f.read()
    if not content.startswith(CLOUD_CONFIG_HEADER):
        return {"valid": False, "errors": [f'format-l1.c1: needs to begin with "{CLOUD_CONFIG_HEADER.decode()}"'],
                "deprecations": [], "top": []}
    try:
        config = yaml.load(content, Loader=_CustomSafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "context_mark", None) or getattr(e, "problem_mark", None)
        where = f"format-l{mark.line + 1}.c{mark.column + 1}" if mark else "format-l1.c1"
        return {"valid": False, "errors": [f"{where}: not valid yaml: {e}"], "deprecations": [], "top": []}
    if not isinstance(config, dict):
        return {"valid": False, "errors": ["Cloud-config is not a YAML dict."], "deprecations": [], "top": []}
    top = []
    root = yaml.compose(content, Loader=_CustomSafeLoader)
    for key_node, value_node in root.value:
        if key_node.tag == "tag:yaml.org,2002:str":
            key = key_node.value
            top.append([key, key_node.start_mark.line + 1, config.get(key) in (None, False, "", [], {})])
    errors, deprecations = [], []
    for error in sorted(validator.iter_errors(config), key=lambda e: e.path):
        problem = ".".join(str(p) for p in error.path) + ": " + error.message
        (deprecations if isinstance(error, SchemaDeprecationError) else errors).append(problem)
    return {"valid": not errors, "errors": errors, "deprecations": deprecations, "top": top}


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: corpus_oracle.py SCHEMA.json FILE...")
    with open(sys.argv[1]) as f:
        schema = json.load(f)
    validator = cloudinit_validator()(schema, format_checker=FormatChecker())
    print(json.dumps({path: verdict(validator, path) for path in sys.argv[2:]}, indent=1, default=str))


if __name__ == "__main__":
    main()
