// Preloaded into every node process of a plugin's tools (NODE_OPTIONS=--import=<this file>).
// Registers resolve-hooks.mjs so that ESM `import "pkg"` finds packages in the env that ally
// built, while the plugin's own directory stays untouched (it may be read-only).
// CommonJS `require` needs no hook: NODE_PATH points at the same node_modules.
import { register } from "node:module";

register(new URL("./resolve-hooks.mjs", import.meta.url));
