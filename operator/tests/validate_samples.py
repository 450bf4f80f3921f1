"""Validates VideoChatCluster documents against the CRD's openAPIV3Schema.

usage: validate_samples.py CRD.yaml --valid FILE... --invalid FILE...

Every --valid file must pass and every --invalid file must be refused, so
the check proves it can fail. Strict like `kubectl apply --validate=strict`:
fields the schema does not declare are errors. CEL rules
(x-kubernetes-validations) are evaluated by the Rust tests, not here.
"""
import copy
import sys

import jsonschema
import yaml


def strict(node):
    """Closes every object node that lists its properties."""
    if isinstance(node, dict):
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        if node.get("nullable") and "type" in node:
            node["type"] = [node["type"], "null"]
        for value in node.values():
            strict(value)
    elif isinstance(node, list):
        for value in node:
            strict(value)
    return node


def main(argv):
    crd_path = argv[1]
    mode, files = None, {"--valid": [], "--invalid": []}
    for arg in argv[2:]:
        if arg in files:
            mode = arg
        elif mode is None:
            sys.exit("usage: validate_samples.py CRD.yaml --valid FILE... --invalid FILE...")
        else:
            files[mode].append(arg)
    with open(crd_path) as f:
        crd = yaml.safe_load(f)
    schema = strict(copy.deepcopy(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]))
    # metadata is the API server's, not the CRD's: accept any object.
    schema["properties"]["metadata"] = {"type": "object"}
    schema["properties"]["apiVersion"] = {"const": "videochat.dev/v1alpha1"}
    schema["properties"]["kind"] = {"const": "VideoChatCluster"}
    validator = jsonschema.Draft7Validator(schema)
    failed = False
    for path in files["--valid"]:
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
                for error in errors:
                    print(f"FAIL {path}: {'.'.join(map(str, error.path)) or '<root>'}: {error.message}")
                    failed = True
                if not errors:
                    print(f"ok   {path} validates against the CRD schema")
    for path in files["--invalid"]:
        with open(path) as f:
            doc = yaml.safe_load(f)
        errors = list(validator.iter_errors(doc))
        if errors:
            print(f"ok   {path} refused: {errors[0].message}")
        else:
            print(f"FAIL {path} should be refused by the CRD schema but validates")
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
