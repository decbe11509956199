#!/usr/bin/env python3
"""Fails if any two modules under src/ import each other, directly or
through others (DESIGN.md: one-way dependencies; issue 9 broke the last two
cycles). A module is a file; an import is any `crate::`, `super::` or
`self::` path in it outside `#[cfg(test)]` code."""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")

modules = {}
for directory, _, files in os.walk(ROOT):
    for name in files:
        if not name.endswith(".rs"):
            continue
        path = os.path.join(directory, name)
        parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
        if parts[-1] in ("mod", "lib", "main"):
            parts = parts[:-1]
        modules["::".join(parts)] = path


def resolve(current, path):
    parts = path.split("::")
    if parts[0] == "crate":
        base, parts = [], parts[1:]
    elif parts[0] == "self":
        base, parts = current.split("::") if current else [], parts[1:]
    else:  # super (possibly repeated)
        base = current.split("::")[:-1] if current else []
        parts = parts[1:]
        while parts and parts[0] == "super":
            base, parts = base[:-1], parts[1:]
    full = base + parts
    for i in range(len(full), 0, -1):
        name = "::".join(full[:i])
        if name in modules:
            return name
    return None


graph = {m: set() for m in modules}
for module, path in modules.items():
    text = open(path, encoding="utf-8").read().split("#[cfg(test)]")[0]
    for match in re.finditer(r"\b((?:crate|super|self)(?:::\w+)+)", text):
        target = resolve(module, match.group(1))
        if target and target != module:
            graph[module].add(target)

# Tarjan's strongly connected components.
index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]
sys.setrecursionlimit(10000)


def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in graph[v]:
        if w not in index:
            visit(w)
            low[v] = min(low[v], low[w])
        elif w in on_stack:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        component = []
        while True:
            w = stack.pop()
            on_stack.discard(w)
            component.append(w)
            if w == v:
                break
        if len(component) > 1:
            cycles.append(sorted(component))


for v in graph:
    if v not in index:
        visit(v)
for cycle in cycles:
    print("import cycle: " + " <-> ".join(cycle), file=sys.stderr)
if cycles:
    sys.exit(1)
print(f"no import cycles among {len(modules)} modules")
