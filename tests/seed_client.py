"""The platform's own client, taken unchanged from the seed guide and made
runnable in a browser: its TypeScript block with the type annotations stripped.

The transform is a handful of line-level rules for the syntax that block
uses (modifiers, annotated fields and parameters, return types, a non-null
assertion, interfaces, imports); it refuses to run on anything it does not
recognise, so a changed seed fails loudly instead of running something else.
The Node `events` import is provided by a minimal EventEmitter with Node's
semantics for what the block uses (`on`, `off`, `emit`; `error` with no
listener throws), and `process.env` by the page.
"""

from __future__ import annotations

import re
from pathlib import Path

# A verbatim copy of the platform's guide (tests/test_browser.py checks it
# against the original where that is at hand).
SEED = Path(__file__).resolve().parent / "seed" / "websocket-realtime-guide.ko.md"
ORIGINAL = Path("/work/shared/seed/websocket-realtime-guide.ko.md")
MANAGER_FILE = "// lib/websocket/WebSocketManager.ts"

# What a Next.js bundle gives `import EventEmitter from 'events'`: the parts the block uses.
EVENT_EMITTER = """
class EventEmitter {
  #listeners = new Map();
  on(type, fn) {
    if (!this.#listeners.has(type)) this.#listeners.set(type, []);
    this.#listeners.get(type).push(fn);
    return this;
  }
  off(type, fn) {
    const list = this.#listeners.get(type) ?? [];
    const at = list.lastIndexOf(fn);
    if (at >= 0) list.splice(at, 1);
    return this;
  }
  emit(type, ...args) {
    const list = [...(this.#listeners.get(type) ?? [])];
    if (type === "error" && list.length === 0) throw args[0] ?? new Error("Unhandled error.");
    for (const fn of list) fn.apply(this, args);
    return list.length > 0;
  }
}
"""

TYPE = r"[A-Za-z_][\w.]*(?:<[^>]*>)?(?:\[\])?(?: \| [A-Za-z_][\w.]*(?:\[\])?)*"
RULES: list[tuple[re.Pattern[str], str]] = [
    # `private ws: WebSocket | null = null;` -> `ws = null;`, `private url: string;` -> `url;`
    (re.compile(rf"^(\s+)(?:private |public )?(\w+): {TYPE}( = .*)?;$"), r"\1\2\3;"),
    # `private reconnectAttempts = 0;` -> `reconnectAttempts = 0;`
    (re.compile(r"^(\s+)(?:private |public )(\w+ = .*;)$"), r"\1\2"),
    # `connect(token?: string): void {` -> `connect(token) {`
    (re.compile(rf"^(\s+)(?:private |public )?(\w+)\(([^)]*)\)(?:: {TYPE})? \{{$"), "METHOD"),
    # `return this.connections.get(key)!;` -> `return this.connections.get(key);`
    (re.compile(r"^(\s+return .*\))!;$"), r"\1;"),
    (re.compile(r"^export (class|const) "), r"\1 "),
]
PARAMETER = re.compile(rf"^(\w+)\??: {TYPE}$")


def typescript_block(marker: str, text: str | None = None) -> str:
    """The ```typescript block of the seed guide whose first line is `marker`."""
    text = SEED.read_text() if text is None else text
    for block in re.findall(r"```typescript\n(.*?)```", text, re.DOTALL):
        if block.startswith(marker + "\n"):
            return str(block)
    raise LookupError(f"no typescript block starting with {marker!r} in {SEED}")


def strip_types(source: str) -> str:
    out: list[str] = []
    lines = iter(source.splitlines())
    for line in lines:
        if line.startswith("import "):
            if line != "import EventEmitter from 'events';":
                raise ValueError(f"unexpected import: {line}")
            out.append(EVENT_EMITTER)
            continue
        if line.startswith("export interface "):
            # Types only: skip to the closing brace.
            for inner in lines:
                if inner == "}":
                    break
            continue
        out.append(_line(line))
    return "\n".join(out) + "\n"


def _line(line: str) -> str:
    for pattern, replacement in RULES:
        match = pattern.match(line)
        if match is None:
            continue
        if replacement == "METHOD":
            indent, name, params = match.group(1), match.group(2), match.group(3)
            if name in ("if", "for", "while", "switch", "catch"):
                continue
            return f"{indent}{name}({', '.join(_parameter(p.strip()) for p in params.split(',') if p.strip())}) {{"
        return pattern.sub(replacement, line)
    unknown = r"\b(private|public|protected|readonly|abstract|interface|enum|declare|namespace|implements)\b"
    if re.search(unknown + r"|^\s*type \w+ =|\w: (string|number|boolean|void|any)\b|\)!| as [A-Z]\w*", line):
        raise ValueError(f"a TypeScript construct the transform does not know: {line.strip()}")
    return line


def _parameter(text: str) -> str:
    match = PARAMETER.match(text)
    if match is None:
        raise ValueError(f"unexpected parameter: {text}")
    return match.group(1)


def manager_script() -> str:
    """The seed's `WebSocketConnection` and `wsManager`, as plain JavaScript."""
    return strip_types(typescript_block(MANAGER_FILE))
