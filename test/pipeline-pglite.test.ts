import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decideInFile } from '../src/approvals/human-edit.js';
import { silentLogger } from './helpers/log.js';
import { Pipeline } from '../src/pipeline.js';
import { createWorkspace } from './helpers/workspace.js';

/* The embedded database has one connection: nothing may wait behind the migration that holds it. */

let pipeline: Pipeline;

beforeAll(async () => {
  const workspace = await createWorkspace({
    databases: { main_db: { client: 'pglite', path: 'memory://' } },
    environments: { staging: { databases: ['main_db'] } },
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
      // Many short statements: PGlite runs each on the main thread, and between them the process
      // answers other calls, so a status read that waited for the connection would wait for all.
      sql: Array.from({ length: 100 }, () => 'SELECT pg_sleep(0.02)').join(';\n'),
      title: 'A slow migration',
      reason: 'It holds the single PGlite connection for about two seconds.',
    });
    await decideInFile(pipeline.filePath(request.id), { status: 'APPROVED', decidedBy: 'Dana Reyes' });
    // Blocking behind the job, status would first answer once it is over ("succeeded").
    const seen: string[] = [];
    for (let i = 0; i < 200 && !seen.includes('succeeded'); i += 1) {
      const status = await pipeline.status(request.id);
      if (status.decision !== null) seen.push(status.execution);
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
    // Answered again and again while it ran; blocking, the first read would have waited for the end.
    expect(seen.filter((execution) => execution === 'running').length).toBeGreaterThanOrEqual(5);
    expect(seen.at(-1)).toBe('succeeded');
  });
});
