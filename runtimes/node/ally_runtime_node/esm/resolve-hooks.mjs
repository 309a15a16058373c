// ESM resolve hook installed by ally's node runtime.
//
// Node resolves a bare specifier ("lodash", "@scope/pkg/sub") by walking up from the importing
// file looking for node_modules; ESM ignores NODE_PATH. The plugin's packages live in the env
// (this file's grandparent directory), not beside the plugin. So: resolve normally first (a
// plugin may bring its own node_modules), and only when a bare specifier is not found, resolve
// it again as if it were imported from the env's package.json.

const ENV_PACKAGE_JSON = new URL("../package.json", import.meta.url).href;

function isBare(specifier) {
  // Not "./x", "../x", "/x", "#imports", nor a URL or "node:" builtin.
  return !/^(?:\.{0,2}\/|#|[a-zA-Z][a-zA-Z\d+.-]*:)/.test(specifier);
}

export async function resolve(specifier, context, nextResolve) {
  try {
    return await nextResolve(specifier, context);
  } catch (error) {
    if (!isBare(specifier) || error?.code !== "ERR_MODULE_NOT_FOUND") throw error;
    try {
      return await nextResolve(specifier, { ...context, parentURL: ENV_PACKAGE_JSON });
    } catch (second) {
      // Not in the env either: report the original failure, which names the plugin's file.
      throw second?.code === "ERR_MODULE_NOT_FOUND" ? error : second;
    }
  }
}
