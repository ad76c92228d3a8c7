#!/usr/bin/env python3
"""Offline licence and source check over Cargo.lock (what `cargo deny check
licenses sources` would do, without its advisory database, which needs the
network): every package the build can pull in must come from crates.io and
carry an SPDX expression that an allowed licence satisfies.

Reads `cargo metadata --locked` (no network once the registry cache is
warm). Exits 1 naming each offending package.
"""
import json
import re
import subprocess
import sys

# Permissive licences compatible with shipping cohort under Apache-2.0.
ALLOWED = {
    "MIT", "Apache-2.0", "Apache-2.0 WITH LLVM-exception", "BSD-2-Clause",
    "BSD-3-Clause", "ISC", "Zlib", "Unicode-3.0", "Unicode-DFS-2016",
    "Unlicense", "BSL-1.0", "CC0-1.0", "MPL-2.0",
}
CRATES_IO = "registry+https://github.com/rust-lang/crates.io-index"


def tokens(expr):
    # Legacy "A/B" means "A OR B" (crates.io accepted it before SPDX).
    expr = expr.replace("/", " OR ")
    return re.findall(r"\(|\)|[A-Za-z0-9.+-]+", expr)


def satisfied(expr):
    """Evaluates an SPDX expression: OR binds looser than AND; `X WITH Y`
    is one licence."""
    toks = tokens(expr)
    pos = 0

    def peek():
        return toks[pos] if pos < len(toks) else None

    def take():
        nonlocal pos
        pos += 1
        return toks[pos - 1]

    def primary():
        if peek() == "(":
            take()
            v = disjunction()
            if take() != ")":
                raise ValueError("unbalanced parentheses")
            return v
        lic = take()
        if peek() == "WITH":
            take()
            lic = f"{lic} WITH {take()}"
        return lic in ALLOWED

    def conjunction():
        v = primary()
        while peek() == "AND":
            take()
            v = primary() and v
        return v

    def disjunction():
        v = conjunction()
        while peek() == "OR":
            take()
            v = conjunction() or v
        return v

    result = disjunction()
    if pos != len(toks):
        raise ValueError(f"cannot parse licence expression {expr!r}")
    return result


def main():
    meta = json.loads(subprocess.check_output(
        ["cargo", "metadata", "--format-version", "1", "--locked"]))
    bad = []
    for p in meta["packages"]:
        name = f'{p["name"]} {p["version"]}'
        if p["source"] is None:
            if p["id"] not in meta["workspace_members"]:
                bad.append(f"{name}: a path dependency outside the workspace")
            continue
        if p["source"] != CRATES_IO:
            bad.append(f"{name}: source {p['source']} is not crates.io")
        lic = p.get("license")
        if not lic:
            bad.append(f"{name}: no SPDX licence expression (license-file only)")
            continue
        try:
            if not satisfied(lic):
                bad.append(f"{name}: licence {lic!r} is not in the allowed set")
        except (ValueError, IndexError) as e:
            bad.append(f"{name}: {e}")
    for b in bad:
        print(f"licences: {b}", file=sys.stderr)
    if bad:
        sys.exit(1)
    print(f"licences: {len(meta['packages'])} packages, all from crates.io "
          "under allowed licences")


if __name__ == "__main__":
    main()
