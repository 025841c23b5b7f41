import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { ApprovalFrontMatter } from '../src/approvals/request.js';
import { ConfigSchema } from '../src/config.js';
import { PROJECT_ROOT } from '../src/server/launch.js';

/*
 * JSON Schemas for editors, generated from the zod schemas (never hand-copied). With --check it
 * fails when a checked-in schema differs from what the zod schemas produce now.
 */

const schemas = {
  'approval-front-matter.schema.json': z.toJSONSchema(ApprovalFrontMatter, { io: 'input' }),
  'config.schema.json': z.toJSONSchema(ConfigSchema, { io: 'input' }),
};

const check = process.argv.includes('--check');
const dir = path.join(PROJECT_ROOT, 'schemas');
await mkdir(dir, { recursive: true });
let stale = 0;
for (const [name, schema] of Object.entries(schemas)) {
  const text = `${JSON.stringify(schema, null, 2)}\n`;
  const file = path.join(dir, name);
  if (check) {
    const current = await readFile(file, 'utf8').catch(() => '');
    if (current !== text) {
      process.stderr.write(`schemas/${name} is out of date: run npm run schemas\n`);
      stale += 1;
    }
  } else {
    await writeFile(file, text);
    process.stdout.write(`wrote schemas/${name}\n`);
  }
}
process.exitCode = stale > 0 ? 1 : 0;
