import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { PROJECT_ROOT } from '../src/server/launch.js';

describe('JSON Schemas in schemas/', () => {
  it('are exactly what the zod schemas generate now', () => {
    const run = spawnSync(process.execPath, ['--import', 'tsx', 'scripts/generate-schemas.ts', '--check'], {
      cwd: PROJECT_ROOT,
      encoding: 'utf8',
    });
    expect(run.stderr).toBe('');
    expect(run.status).toBe(0);
  });
});
