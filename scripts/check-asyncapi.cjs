// Parses an AsyncAPI document with AsyncAPI's own parser (@asyncapi/parser, which validates
// against the specification's JSON Schema and its rule set) and exits 1 on any error or warning.
// Usage: NODE_PATH=<folder holding @asyncapi/parser> node scripts/check-asyncapi.cjs doc.json
const fs = require("fs");
const { Parser, DiagnosticSeverity } = require("@asyncapi/parser");

async function main(file) {
  const parser = new Parser();
  const { document, diagnostics } = await parser.parse(fs.readFileSync(file, "utf8"));
  const names = ["error", "warning", "info", "hint"];
  for (const d of diagnostics) {
    console.log(`${names[d.severity]} ${d.code}: ${d.message} (at ${d.path.join(".") || "/"})`);
  }
  const bad = diagnostics.filter(
    (d) => d.severity === DiagnosticSeverity.Error || d.severity === DiagnosticSeverity.Warning,
  );
  if (!document || bad.length > 0) {
    console.error(`${file}: not a valid AsyncAPI document (${bad.length} errors or warnings)`);
    process.exit(1);
  }
  console.log(
    `${file}: valid AsyncAPI ${document.version()}: ${document.channels().length} channels, ` +
      `${document.operations().length} operations, ${document.allMessages().length} messages`,
  );
}

main(process.argv[2]).catch((e) => {
  console.error(e);
  process.exit(1);
});
