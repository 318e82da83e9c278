// Builds a JavaScript wasi:http/proxy component with componentize-js (StarlingMonkey):
//   node build.mjs COMPONENTIZE_JS_DIR SOURCE.js WIT_DIR WORLD OUT.wasm
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [moduleDir, source, wit, world, out] = process.argv.slice(2);
const entry = join(moduleDir, "node_modules/@bytecodealliance/componentize-js/src/componentize.js");
const { componentize } = await import(pathToFileURL(entry).href);
const { component } = await componentize({ sourcePath: source, witPath: wit, worldName: world });
await writeFile(out, component);
