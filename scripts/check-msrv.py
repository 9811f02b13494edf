#!/usr/bin/env python3
"""Checks that every publishable crate of the workspace declares a `rust-version` at least as
high as the highest `rust-version` in its locked dependency closure.

The closure is what a user of the crate compiles: normal and build dependencies (not dev),
with all features, for every target platform, at the versions in Cargo.lock. Crates with
`publish = false` (examples, tests, benches) are reported but never fail the check: they are
built only here, with the toolchain of the test run.

Run from anywhere: python3 scripts/check-msrv.py
"""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cargo(*args):
    run = subprocess.run(["cargo", *args], cwd=ROOT, capture_output=True, text=True)
    if run.returncode != 0:
        sys.stderr.write(run.stderr)
        sys.exit(f"error: cargo {' '.join(args)} failed")
    return run.stdout


def parse_version(text):
    """'1.89' / '1.89.0' -> (1, 89, 0); None stays None."""
    if not text:
        return None
    parts = [int(p) for p in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def show(version):
    return ".".join(str(p) for p in version[:2]) + (f".{version[2]}" if version[2] else "")


def closure(package, kinds):
    """(name, version) of every package in the dependency tree of `package`."""
    out = cargo(
        "tree", "--quiet", "-p", package, "--all-features", "-e", kinds,
        "--target", "all", "--prefix", "none", "--format", "{p}",
    )
    found = set()
    for line in out.splitlines():
        words = line.split()
        if len(words) >= 2 and words[1].startswith("v"):
            found.add((words[0], words[1][1:]))
    return found


def main():
    metadata = json.loads(cargo("metadata", "--format-version", "1", "--all-features"))
    rust_version = {
        (p["name"], p["version"]): parse_version(p.get("rust_version"))
        for p in metadata["packages"]
    }
    members = [p for p in metadata["packages"] if p["id"] in metadata["workspace_members"]]

    failed = False
    for member in sorted(members, key=lambda p: p["name"]):
        name = member["name"]
        publishable = member.get("publish") != []
        declared = parse_version(member.get("rust_version"))
        kinds = "normal,build" if publishable else "normal,build,dev"
        deps = closure(name, kinds) - {(name, member["version"])}
        needed = max(
            ((rust_version.get(dep), dep) for dep in deps if rust_version.get(dep)),
            default=None,
        )
        if needed is None:
            print(f"{name}: no dependency declares a rust-version")
            continue
        need, (dep_name, dep_version) = needed
        why = f"{dep_name} {dep_version} needs {show(need)}"
        if not publishable:
            print(f"{name} (publish = false, dev-dependencies included): {why}")
        elif declared is None:
            print(f"error: {name} is published but declares no rust-version ({why})")
            failed = True
        elif declared < need:
            print(
                f"error: {name} declares rust-version {show(declared)} but {why}.\n"
                f"  why it is there: cargo tree -p {name} --all-features -e normal,build"
                f" --target all -i {dep_name}@{dep_version}\n"
                f"  raise rust-version in the root Cargo.toml, or lock an older version:"
                f" cargo update -p {dep_name}@{dep_version} --precise <older version>"
            )
            failed = True
        else:
            print(f"{name}: rust-version {show(declared)} ok ({why})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
