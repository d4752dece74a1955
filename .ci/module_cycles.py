#!/usr/bin/env python3
"""Fails when the modules of a crate import each other in a circle.

Usage: module_cycles.py <crate>/src [more src dirs...]

Each file is a module (`lib.rs` is the crate root, `a.rs` and `a/mod.rs`
are `a`, `a/b.rs` is `a::b`). Module A depends on module B when A names a
path into B: `use crate::b::X`, `crate::b::f()`, `super::X` (the parent),
or `b::X` for a child module `b` that A declares. A path names the
deepest module it reaches (`crate::bulk::table::BulkTable` is
`bulk::table`); a path that stops at the crate root (`crate::Error`, an
item the root re-exports) depends on the root, which declares every
module: import items from the module that defines them.

Comments and string literals are ignored, and so is a `mod` declaration
itself (owning a module is not using it). Test modules inside a file count
as the file. The script prints every circle (a strongly connected set of
modules, with the edges inside it) and exits 1 if there is one.

Why a script and not `cargo modules dependencies --acyclic`: that tool
builds rust-analyzer's crates (several minutes on the 2-core CI machine,
on every run from nothing), for a check that needs only the `use` paths.
"""

import pathlib
import re
import sys

ROOT = "crate"


def module_name(src: pathlib.Path, file: pathlib.Path) -> str:
    rel = file.relative_to(src).with_suffix("")
    parts = list(rel.parts)
    if parts == ["lib"] or parts == ["main"]:
        return ROOT
    if parts[-1] == "mod":
        parts = parts[:-1]
    return "::".join(parts)


def strip(text: str) -> str:
    """Removes comments, string and char literals (keeps line structure)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c == "r" and re.match(r'r#*"', text[i:i + 10]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r'r(#*)"', text[i:])
            end = '"' + m.group(1)
            j = text.find(end, i + len(m.group(0)))
            i = n if j < 0 else j + len(end)
            out.append('""')
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
            out.append('""')
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", text[i:i + 12]):
            m = re.match(r"'(\\[^']*|[^\\'])'", text[i:])
            i += len(m.group(0)) if m else 1
            out.append("' '")
        else:
            out.append(c)
            i += 1
    return "".join(out)


def expand_use(tree: str, prefix: list) -> list:
    """Expands a `use` tree (`a::{b, c::{d, self}}`) into paths."""
    tree = tree.strip()
    if not tree:
        return []
    # Split off a leading `a::b::` before a brace group.
    depth = 0
    for i, ch in enumerate(tree):
        if ch == "{":
            head = tree[:i].rstrip(":").strip()
            body = tree[i + 1: tree.rfind("}")]
            base = prefix + [p for p in head.split("::") if p]
            paths = []
            for part in split_top(body):
                paths += expand_use(part, base)
            return paths
    name = tree.split(" as ")[0].strip()
    segs = [p for p in name.split("::") if p]
    if segs and segs[-1] == "self":
        segs = segs[:-1]
    return [prefix + segs]


def split_top(body: str) -> list:
    parts, depth, cur = [], 0, []
    for ch in body:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p for p in parts if p.strip()]


def resolve(module: str, segs: list, modules: set, children: set):
    """The module a path (as written in `module`) points into, or None
    for a path outside the crate."""
    if not segs:
        return None
    here = [] if module == ROOT else module.split("::")
    head = segs[0]
    if head == "crate":
        base, rest = [], segs[1:]
    elif head == "super":
        base, rest = here[:-1], segs[1:]
        while rest and rest[0] == "super":
            base, rest = base[:-1], rest[1:]
    elif head == "self":
        base, rest = here, segs[1:]
    elif head in children:
        base, rest = here, segs
    else:
        return None
    best = "::".join(base) or ROOT
    path = list(base)
    for seg in rest:
        path.append(seg)
        name = "::".join(path)
        if name in modules:
            best = name
        else:
            break
    return best


def inline_depth(text: str):
    """For each position, how many inline `mod x { ... }` blocks enclose it
    (as a function of the position)."""
    spans = []
    for m in re.finditer(r"\bmod\s+\w+\s*\{", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        spans.append((m.end(), i))
    return lambda pos: sum(1 for a, b in spans if a <= pos < b)


def file_paths(text: str, children: set) -> list:
    """Every path of the file, as written at the file's own level: inside an
    inline module (`mod tests { use super::*; }`), one `super` is dropped."""
    depth = inline_depth(text)
    found = []
    for m in re.finditer(r"\buse\s+([^;]+);", text):
        found += [(m.start(), segs) for segs in expand_use(m.group(1), [])]
    # Paths in code: crate::a::b, super::x, self::x, child::x.
    for m in re.finditer(r"(?<![\w:])((?:crate|super|self)(?:::\w+)+)", text):
        found.append((m.start(), m.group(1).split("::")))
    for child in children:
        for m in re.finditer(rf"(?<![\w:])({child}(?:::\w+)+)", text):
            found.append((m.start(), m.group(1).split("::")))
    paths = []
    for pos, segs in found:
        d = depth(pos)
        while d and segs and segs[0] == "super":
            segs, d = ["self"] + segs[1:], d - 1
        if d and segs and segs[0] == "self":
            continue
        paths.append(segs)
    return paths


def graph(src: pathlib.Path):
    files = sorted(src.rglob("*.rs"))
    names = {f: module_name(src, f) for f in files}
    modules = set(names.values())
    edges = {m: set() for m in modules}
    for f, m in names.items():
        text = strip(f.read_text())
        children = set(re.findall(r"\bmod\s+(\w+)\s*;", text))
        for segs in file_paths(text, children):
            target = resolve(m, segs, modules, children)
            if target is not None and target != m:
                edges[m].add(target)
    return edges


def cycles(edges):
    """Tarjan's strongly connected components of size > 1."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def main() -> int:
    failed = False
    for arg in sys.argv[1:] or ["crates/courier/src"]:
        src = pathlib.Path(arg)
        edges = graph(src)
        found = cycles(edges)
        count = sum(len(e) for e in edges.values())
        if not found:
            print(f"{src}: {len(edges)} modules, {count} imports between them, no cycle")
            continue
        failed = True
        for comp in found:
            print(f"{src}: these modules import each other in a circle: {', '.join(comp)}")
            for a in comp:
                for b in sorted(edges[a] & set(comp)):
                    why = " (the crate root declares every module: import from the defining module)" if b == ROOT else ""
                    print(f"    {a} -> {b}{why}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
