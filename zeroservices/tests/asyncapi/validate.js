// Validates an AsyncAPI document with the official parser (@asyncapi/parser, pinned in
// package.json / package-lock.json next to this file).
// Usage: node validate.js <dir with node_modules/@asyncapi/parser> <document.json> [samples.json]
// Prints every diagnostic as one JSON line {severity, code, message, path}; exits 1 when any
// has error severity (0), 2 on a usage or load problem, 0 otherwise.
// samples.json, when given: [{"message": "<key of components.messages>", "payload": {...}}]:
// each payload (a message the server really sent) must validate against that message's
// payload schema (Ajv, the parser's own dependency, on the parser's dereferenced schema);
// exits 1 when one does not.
"use strict";
const fs = require("fs");
const path = require("path");

async function main() {
  const [dir, file, samplesFile] = process.argv.slice(2);
  if (!dir || !file) {
    console.error("usage: node validate.js <parser dir> <document.json>");
    process.exit(2);
  }
  const { Parser, DiagnosticSeverity } = require(path.join(path.resolve(dir), "node_modules", "@asyncapi", "parser"));
  const parser = new Parser();
  const text = fs.readFileSync(file, "utf8");
  const { document, diagnostics } = await parser.parse(text);
  let errors = 0;
  for (const d of diagnostics) {
    if (d.severity === DiagnosticSeverity.Error) errors += 1;
    console.log(JSON.stringify({ severity: d.severity, code: d.code, message: d.message, path: d.path }));
  }
  if (errors > 0 || !document) {
    console.error(`${errors} error(s); document ${document ? "parsed" : "NOT parsed"}`);
    process.exit(1);
  }
  if (samplesFile) {
    const Ajv = require(path.join(path.resolve(dir), "node_modules", "ajv"));
    const ajv = new Ajv({ strict: false, allErrors: true });
    const samples = JSON.parse(fs.readFileSync(samplesFile, "utf8"));
    let bad = 0;
    for (const { message, payload } of samples) {
      const m = document.messages().all().find((x) => x.id() === message);
      if (!m) {
        console.error(`no message ${message} in the document`);
        bad += 1;
        continue;
      }
      const validate = ajv.compile(m.payload().json());
      if (!validate(payload)) {
        console.error(`${message}: ${JSON.stringify(payload)} breaks its schema: ${ajv.errorsText(validate.errors)}`);
        bad += 1;
      }
    }
    if (bad > 0) {
      console.error(`${bad} of ${samples.length} sample(s) break the document`);
      process.exit(1);
    }
    console.error(`${samples.length} sample(s) match their messages`);
  }
  console.error(`valid: ${diagnostics.length} diagnostic(s), none an error; ${document.messages().length} messages, ${document.operations().length} operations`);
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : String(e));
  process.exit(2);
});
