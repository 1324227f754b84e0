// A site's pre-check: the exported JSON Schemas applied by ajv (draft 2020-12, strict
// mode, ajv-formats), over messages given as JSON text.
//
//   node check.mjs SCHEMA_DIR < cases.jsonl > verdicts.jsonl
//
// Each input line is {"schema": "session_v1.schema.json", "text": "<the message>"};
// each output line is {"json": bool, "valid": bool, "paths": ["field", ...]}: whether
// the text parsed, whether the instance is valid, and the sorted failing field paths
// ("" for the instance itself). A schema that does not compile in strict mode is an
// error: the process exits 1 naming it.
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";
import Ajv2020 from "ajv/dist/2020.js";
import addFormats from "ajv-formats";

const directory = process.argv[2];
const ajv = new Ajv2020({ strict: true, allErrors: true });
addFormats(ajv);

const validators = {};
for (const name of readdirSync(directory).filter((n) => n.endsWith(".schema.json"))) {
  try {
    validators[name] = ajv.compile(JSON.parse(readFileSync(join(directory, name), "utf8")));
  } catch (error) {
    console.error(`${name} does not compile under ajv's strict mode: ${error.message}`);
    process.exit(1);
  }
}

// The field an error is about: the instance path, or the property a required or
// additionalProperties error names. "if" errors only repeat what then/else found.
function pathOf(error) {
  let path = error.instancePath.replace(/^\//, "").replaceAll("/", ".");
  const property = error.params.missingProperty ?? error.params.additionalProperty;
  if (property !== undefined) path = path ? `${path}.${property}` : property;
  return path;
}

const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const line of lines) {
  if (!line) continue;
  const { schema, text } = JSON.parse(line);
  let instance;
  try {
    instance = JSON.parse(text);
  } catch {
    process.stdout.write(JSON.stringify({ json: false, valid: false, paths: [] }) + "\n");
    continue;
  }
  const validate = validators[schema];
  const valid = validate(instance);
  const paths = valid
    ? []
    : [...new Set(validate.errors.filter((e) => e.keyword !== "if").map(pathOf))].sort();
  process.stdout.write(JSON.stringify({ json: true, valid, paths }) + "\n");
}
