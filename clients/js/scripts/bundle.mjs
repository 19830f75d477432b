// Writes the browser module the demo page loads, static/realtime-client.js: the
// compiled client (dist/src/client.js, one module without imports) under a
// banner. `--check` only compares, and exits 1 when the committed file differs
// from this build (tests/test_js_client.py runs it after `npm run build`).

import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const built = join(here, "..", "dist", "src", "client.js");
const target = join(here, "..", "..", "..", "static", "realtime-client.js");
const BANNER =
  "// Built from clients/js/src/client.ts by `npm run bundle` (in clients/js). Do not edit:\n" +
  "// change the TypeScript source and run it again. See docs/client.md.\n";

const code = readFileSync(built, "utf8");
if (/^\s*import\s|\bimport\(/m.test(code)) {
  throw new Error(`${built} imports another module: the page loads one file`);
}
const text = BANNER + code;
const where = relative(process.cwd(), target);

if (process.argv.includes("--check")) {
  let current = null;
  try {
    current = readFileSync(target, "utf8");
  } catch {
    // missing: stale
  }
  if (current !== text) {
    console.error(`stale: ${where} (run npm run bundle in clients/js)`);
    process.exit(1);
  }
  console.log(`${where} is the build of src/client.ts`);
} else {
  writeFileSync(target, text);
  console.log(`wrote ${where}`);
}
