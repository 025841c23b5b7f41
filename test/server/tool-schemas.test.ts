import type { Tool } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startStdioServer, type StdioSession } from '../helpers/mcp.js';
import { TEST_DATABASE_ENV } from '../helpers/postgres.js';
import { createWorkspace, type Workspace } from '../helpers/workspace.js';

/*
 * What the agent reads is what the code does: the tool list as the real server sends it over stdio,
 * pinned so that a sentence describing a feature as missing, or a choice the config does not offer,
 * fails here. The agent decides from these words alone.
 */

interface Property {
  readonly type?: string;
  readonly enum?: readonly string[];
  readonly description?: string;
}

let workspace: Workspace;
let server: StdioSession;
let tools: Map<string, Tool>;

function tool(name: string): Tool {
  const found = tools.get(name);
  if (!found) throw new Error(`the server does not list ${name}`);
  return found;
}

function property(toolName: string, name: string): Property {
  const properties = tool(toolName).inputSchema.properties as Record<string, Property> | undefined;
  const found = properties?.[name];
  if (!found) throw new Error(`${toolName} has no input ${name}`);
  return found;
}

beforeAll(async () => {
  workspace = await createWorkspace({
    databases: {
      main_db: { client: 'pg', connection_env: 'TEST_MAIN_DB_URL' },
      staging_db: { client: 'pg', connection_env: 'TEST_STAGING_DB_URL' },
      local_db: { client: 'pglite', path: 'memory://' },
      unlisted_db: { client: 'pglite', path: 'memory://' },
    },
    environments: {
      production: { databases: ['main_db'] },
      staging: { databases: ['staging_db', 'local_db'], require_approval: 'not_for_dry_runs' },
    },
  });
  server = await startStdioServer(workspace.configPath, TEST_DATABASE_ENV);
  tools = new Map((await server.client.listTools()).tools.map((t) => [t.name, t]));
});

afterAll(async () => {
  await server.close();
});

describe('execute_migration offers the configured targets', () => {
  it('lists the configured environments as the enum of environment', () => {
    const environment = property('execute_migration', 'environment');
    expect(environment.type).toBe('string');
    expect(environment.enum).toEqual(Object.keys(workspace.config.environments));
  });

  it('lists only databases some environment names as the enum of database', () => {
    expect(property('execute_migration', 'database').enum).toEqual(['main_db', 'staging_db', 'local_db']);
  });

  it('describes which databases each environment may target', () => {
    const pairs = 'production: main_db; staging: staging_db, local_db';
    expect(property('execute_migration', 'environment').description).toContain(pairs);
    expect(property('execute_migration', 'database').description).toContain(pairs);
  });

  it('keeps every other field of the request as the pipeline defines it', () => {
    const { properties, required } = tool('execute_migration').inputSchema;
    expect(Object.keys(properties ?? {}).sort()).toEqual(
      [
        'backup_before',
        'database',
        'dry_run',
        'environment',
        'migration_file',
        'priority',
        'reason',
        'rollback_sql',
        'sql',
        'title',
      ].sort(),
    );
    expect([...(required ?? [])].sort()).toEqual(['database', 'environment', 'reason', 'sql', 'title']);
  });

  it('still refuses an environment outside the enum with ENVIRONMENT_UNKNOWN, naming the allowed ones', async () => {
    const { outcome, result } = await server.call('execute_migration', {
      environment: 'qa',
      database: 'main_db',
      sql: 'SELECT 1',
      title: 'Guessed environment',
      reason: 'A client that ignores the input schema.',
    });
    expect(result.isError).toBe(true);
    expect(outcome).toMatchObject({ status: 'REFUSED', error: { code: 'ENVIRONMENT_UNKNOWN' } });
    expect(outcome.message).toContain('production, staging');
  });

  it('says which environment lets requests run without a human', () => {
    expect(tool('execute_migration').description).toContain(
      'In staging, dry runs run without a human decision (require_approval: not_for_dry_runs).',
    );
    expect(tool('execute_migration').description).not.toMatch(/In production/);
  });
});

describe('descriptions of features that exist', () => {
  it('describes backup_before as a backup that is taken, not as unsupported', () => {
    const { description } = property('execute_migration', 'backup_before');
    expect(description).not.toMatch(/not supported|refused/i);
    expect(description).toMatch(/pg_dump/);
    expect(description).toMatch(/copies/);
  });

  it('describes CREATE INDEX CONCURRENTLY as run statement by statement, not refused', () => {
    const { description } = property('execute_migration', 'sql');
    expect(description).not.toMatch(/CONCURRENTLY\)? (is |are )?refused/i);
    expect(description).toMatch(/CREATE INDEX CONCURRENTLY/);
    expect(description).toMatch(/step by step|commits? on its own/i);
  });

  it('says a dry run with effects no rollback undoes is refused', () => {
    expect(property('execute_migration', 'dry_run').description).toMatch(
      /refused when a statement has effects no rollback undoes/i,
    );
  });

  it('names every status an outcome can have, VOID and CANCELLED included', () => {
    for (const status of ['APPROVED', 'REJECTED', 'EXPIRED', 'VOID', 'CANCELLED', 'REFUSED']) {
      expect(tool('execute_migration').description).toContain(status);
    }
  });

  it("states the server's configured wait bound, not a default", () => {
    const bound = `${workspace.config.wait.max_wait_seconds} s`;
    expect(tool('execute_migration').description).toContain(`waits up to ${bound}`);
    expect(tool('await_approval').description).toContain(`up to ${bound}`);
    expect(property('await_approval', 'max_wait_seconds').description).toContain(bound);
    expect(JSON.stringify([...tools.values()])).not.toMatch(/~50 s/);
  });

  it('tells the agent to keep waiting while the result is not final, not only while PENDING', () => {
    expect(tool('execute_migration').description).toMatch(/as long as final is false/);
    expect(tool('await_approval').description).toMatch(/while final is false/);
    expect(server.client.getInstructions()).toMatch(/not final \(PENDING, or APPROVED while running\)/);
  });
});

describe('every tool says what it is and what it does', () => {
  const reading = ['await_approval', 'get_approval_status', 'list_approvals'];
  const changing = ['cancel_approval', 'execute_migration', 'request_rollback'];

  it('lists exactly the six tools', () => {
    expect([...tools.keys()].sort()).toEqual([...reading, ...changing].sort());
  });

  it('gives every tool a title, a description and annotations', () => {
    for (const t of tools.values()) {
      expect(t.title, t.name).toMatch(/\w{3}/);
      expect(t.description?.length ?? 0, t.name).toBeGreaterThan(40);
      expect(t.annotations?.title, t.name).toMatch(/\w{3}/);
      expect(t.annotations?.openWorldHint, t.name).toBe(false);
    }
  });

  it('marks the reading tools read-only and the executing ones destructive', () => {
    for (const name of reading) {
      expect(tool(name).annotations, name).toMatchObject({ readOnlyHint: true, destructiveHint: false });
    }
    for (const name of changing) expect(tool(name).annotations?.readOnlyHint, name).toBe(false);
    expect(tool('execute_migration').annotations?.destructiveHint).toBe(true);
    expect(tool('request_rollback').annotations?.destructiveHint).toBe(true);
  });
});
