// slugify-node: an ESM tool whose dependency lives in the env ally built, not in this directory.
import slugify from "slugify";

let input = "";
for await (const chunk of process.stdin) input += chunk;
const { text } = JSON.parse(input || "{}");
console.log(JSON.stringify({ success: true, result: slugify(text, { lower: true, strict: true }) }));
