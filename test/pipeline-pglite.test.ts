import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decideInFile } from '../src/approvals/human-edit.js';
import { silentLogger } from '../src/log.js';
import { Pipeline } from '../src/pipeline.js';
import { createWorkspace } from './helpers/workspace.js';

/* The embedded database has one connection: nothing may wait behind the migration that holds it. */

let pipeline: Pipeline;

beforeAll(async () => {
  const workspace = await createWorkspace({
    databases: { main_db: { client: 'pglite', path: 'memory://' } },
  });
  pipeline = await Pipeline.open(workspace.config, { log: silentLogger });
});

afterAll(async () => {
  await pipeline?.close();
});

describe('status on PGlite', () => {
  it('answers "running" while a migration holds the only connection, instead of waiting for it', async () => {
    const { request } = await pipeline.submit({
      environment: 'staging',
      database: 'main_db',
      sql: 'SELECT pg_sleep(2)',
      title: 'A slow migration',
      reason: 'It holds the single PGlite connection for two seconds.',
    });
    await decideInFile(pipeline.filePath(request.id), { status: 'APPROVED', decidedBy: 'Dana Reyes' });
    // Blocking behind the job, status would first answer once it is over ("succeeded").
    const seen: string[] = [];
    for (let i = 0; i < 200 && !seen.includes('succeeded'); i += 1) {
      const status = await pipeline.status(request.id);
      if (status.decision !== null) seen.push(status.execution);
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
    expect(seen).toContain('running');
    expect(seen.at(-1)).toBe('succeeded');
  });
});
