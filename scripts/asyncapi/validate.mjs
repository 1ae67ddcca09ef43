// Parse AsyncAPI documents with the official parser (@asyncapi/parser) and report.
// Usage: node validate.mjs FILE...  Prints one JSON line per file:
// {"file", "valid", "diagnostics": [{severity, code, message, path}], "channels",
//  "operations", "messages"}; exit status 1 when a document has an error.
import { readFileSync } from 'node:fs';
import { Parser } from '@asyncapi/parser';

const SEVERITY = ['error', 'warning', 'information', 'hint'];
const parser = new Parser();
let failed = false;
for (const file of process.argv.slice(2)) {
  const { document, diagnostics } = await parser.parse(readFileSync(file, 'utf8'));
  const report = {
    file,
    valid: document !== undefined,
    diagnostics: diagnostics.map((d) => ({
      severity: SEVERITY[d.severity] ?? String(d.severity),
      code: d.code,
      message: d.message,
      path: d.path.join('/'),
    })),
  };
  if (document) {
    report.version = document.version();
    report.channels = document.channels().all().map((c) => c.address());
    report.operations = document.operations().all().map((o) => ({
      id: o.id(),
      action: o.action(),
      channels: o.channels().all().map((c) => c.address()),
      messages: o.messages().all().map((m) => m.name()),
    }));
    report.messages = document.allMessages().all().map((m) => ({
      name: m.name(),
      payload: m.hasPayload() ? m.payload().type() ?? null : null,
      headers: m.hasHeaders() ? Object.keys(m.headers().properties() ?? {}) : [],
    }));
  } else {
    failed = true;
  }
  console.log(JSON.stringify(report));
}
process.exit(failed ? 1 : 0);
